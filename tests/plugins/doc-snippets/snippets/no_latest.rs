// The whole plugin, as docs/plugins.md shows it ("The declaration").
// {snippet}
