//! Listing a repository's tags: `tags/list`, following the registry's
//! `Link: <…>; rel="next"` pages, bounded.

use image_syncer_core::reference::ImageRef;
use image_syncer_core::stage::StageError;
use oci_client::errors::OciDistributionError;

use crate::errors::classify;
use crate::OciRegistry;

/// Tags asked per page of `GET /v2/<name>/tags/list` ([`OciRegistry::list_tags`]).
pub const TAGS_PAGE_SIZE: usize = 1000;
/// The most pages of a tag list followed: a registry sending more is refused.
pub const MAX_TAG_PAGES: usize = 10_000;
/// The most tags listed for one repository: a registry sending more is refused.
pub const MAX_TAGS: usize = 1_000_000;
/// The largest page of a tag list read, in bytes (a thousand tags of the
/// longest kind take about 130 KiB; a registry ignoring `n` may send more).
const MAX_TAG_PAGE_BYTES: usize = 16 << 20;

impl OciRegistry {
    /// The tags of `repository` (its tag or digest, if any, is ignored), in
    /// the registry's order: `GET /v2/<name>/tags/list?n=1000`, then each
    /// page its `Link: <...>; rel="next"` header names, until one names none.
    pub async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>, StageError> {
        self.list_tags_paged(repository, TAGS_PAGE_SIZE).await
    }

    /// [`OciRegistry::list_tags`], asking `page_size` tags per page.
    ///
    /// A `Link` target may be relative; it is resolved against the URL of the
    /// page that sent it and refused when it leads to another scheme, host or
    /// port. Bounded: at most [`MAX_TAG_PAGES`] pages and [`MAX_TAGS`] tags;
    /// a page that names itself or an earlier page as next, or that has no
    /// tag but names a next one, is refused (never a loop). Each page must
    /// come in full within `readTimeoutSeconds`. Errors are classified as for
    /// manifests: a repository the registry does not know is `NotFound`.
    pub async fn list_tags_paged(
        &self,
        repository: &ImageRef,
        page_size: usize,
    ) -> Result<Vec<String>, StageError> {
        let what = || format!("{repository}: listing tags");
        let refuse = |why: String| StageError::invalid(format!("{}: {why}", what()));
        let mut tags: Vec<String> = Vec::new();
        let mut next: Option<String> = None;
        // Every page asked, as asked: a link back to one is a loop.
        let mut asked_before = std::collections::HashSet::new();
        for page in 1..=MAX_TAG_PAGES {
            let (answer, asked, link) = self
                .answered(what, async {
                    let (reference, auth) = self.prepare_authed(repository).await?;
                    let listed = self
                        .client
                        .list_tags_page(
                            &reference,
                            &auth,
                            Some(page_size.max(1)),
                            next.as_deref(),
                            MAX_TAG_PAGE_BYTES,
                        )
                        .await;
                    listed.map_err(|e| match e {
                        OciDistributionError::TagListTooLarge { limit } => refuse(format!(
                            "page {page} of the tag list is larger than {}",
                            image_syncer_core::manifest::size_for_people(limit)
                        )),
                        e => classify(&what(), e, repository),
                    })
                })
                .await?;
            let count = answer.tags.len();
            if tags.len() + count > MAX_TAGS {
                return Err(refuse(format!(
                    "the registry lists more than {MAX_TAGS} tags; not read further"
                )));
            }
            tags.extend(answer.tags);
            let Some(target) = link.as_deref().and_then(next_link) else {
                return Ok(tags);
            };
            let url = resolve_link(&asked, target).map_err(refuse)?;
            if count == 0 {
                return Err(refuse(format!(
                    "page {page} of the tag list has no tag but names a next page `{target}`"
                )));
            }
            asked_before.insert(asked);
            if asked_before.contains(&url) {
                return Err(refuse(format!(
                    "page {page} of the tag list names itself or an earlier page as next (`{target}`); not followed"
                )));
            }
            next = Some(url);
        }
        Err(refuse(format!(
            "the tag list runs over more than {MAX_TAG_PAGES} pages; not read further"
        )))
    }
}

/// The target of the `rel="next"` link in a `Link` header value (RFC 8288:
/// `<target>; rel="next"`, several links separated by commas).
fn next_link(header: &str) -> Option<&str> {
    let mut rest = header;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>')?;
        let target = &after[..end];
        let params = &after[end + 1..];
        let params = &params[..params.find('<').unwrap_or(params.len())];
        let is_next = params.split([';', ',']).any(|p| match p.split_once('=') {
            Some((k, v)) => {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            }
            None => false,
        });
        if is_next {
            return Some(target.trim());
        }
        rest = &after[end + 1..];
    }
    None
}

/// `link` (absolute, or relative to `page`, the URL that sent it) as an
/// absolute URL on the same scheme, host and port as `page`; another is
/// refused, not followed.
fn resolve_link(page: &str, link: &str) -> Result<String, String> {
    let base =
        url::Url::parse(page).map_err(|e| format!("cannot read the page URL `{page}`: {e}"))?;
    let url = base
        .join(link)
        .map_err(|e| format!("the registry's next-page link `{link}` is not a URL: {e}"))?;
    if url.scheme() != base.scheme()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err(format!(
            "the registry's next-page link `{link}` leads away from {}; not followed",
            base.host_str()
                .map(|h| match base.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_string(),
                })
                .unwrap_or_default()
        ));
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_finds_rel_next_among_links() {
        let cases = [
            r#"</v2/app/tags/list?last=t099&n=100>; rel="next""#,
            r#"<http://r.example/v2/app/tags/list?n=2&last=b>; rel=next"#,
            r#"</v2/a?x=1>; rel="prev", </v2/a?x=2>; rel="next""#,
            r#"</v2/a?x=1>; rel="prev first", </v2/a?x=2>; title="x"; REL="Next Last""#,
            r#"</v2/a?x=1>; rel="prev""#,
            r#"</v2/a?x=1>"#,
            r#"rel="next""#,
            "",
        ];
        let found: Vec<String> = cases
            .iter()
            .map(|h| format!("{h} -> {:?}", next_link(h)))
            .collect();
        insta::assert_snapshot!(found.join("\n"), @r#"
        </v2/app/tags/list?last=t099&n=100>; rel="next" -> Some("/v2/app/tags/list?last=t099&n=100")
        <http://r.example/v2/app/tags/list?n=2&last=b>; rel=next -> Some("http://r.example/v2/app/tags/list?n=2&last=b")
        </v2/a?x=1>; rel="prev", </v2/a?x=2>; rel="next" -> Some("/v2/a?x=2")
        </v2/a?x=1>; rel="prev first", </v2/a?x=2>; title="x"; REL="Next Last" -> Some("/v2/a?x=2")
        </v2/a?x=1>; rel="prev" -> None
        </v2/a?x=1> -> None
        rel="next" -> None
         -> None
        "#);
    }

    #[test]
    fn a_link_resolves_against_the_page_and_stays_on_its_host() {
        let page = "https://r.example:5000/v2/app/tags/list?n=100";
        let resolved: Vec<String> = [
            "/v2/app/tags/list?last=t1&n=100",
            "list?last=t1",
            "https://r.example:5000/v2/app/tags/list?last=t1",
            "https://other.example:5000/v2/app/tags/list?last=t1",
            "https://r.example/v2/app/tags/list?last=t1",
            "http://r.example:5000/v2/app/tags/list?last=t1",
            "//evil.example/v2/x",
        ]
        .iter()
        .map(|l| format!("{l} -> {:?}", resolve_link(page, l)))
        .collect();
        insta::assert_snapshot!(resolved.join("\n"));
    }
}
