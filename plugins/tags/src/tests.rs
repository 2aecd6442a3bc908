use super::*;

const HEX: &str = "31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab";

/// ~40 tags of the kinds real repositories hold, in no particular order.
fn tags() -> Vec<String> {
    let mut tags: Vec<String> = [
        // v-prefixed releases and pre-releases
        "v2.53.1",
        "v2.53.0",
        "v2.52.0",
        "v2.50.1",
        "v2.49.0",
        "v2.54.0-rc.0",
        "v3.0.0-rc.1",
        "v3.0.0",
        "v2.5",
        // the same version without the `v`: another tag, a tie in precedence
        "2.53.1",
        // two-part versions
        "3.19",
        "3.19.1",
        "3.20",
        "16.4",
        // suffixed variants: pre-releases when read as versions
        "16.4-alpine",
        "16.3-alpine",
        "3.19-alpine",
        "16.4-debian",
        "1.25.3-debian",
        "1.25.3",
        // build metadata: ties in precedence with 1.2.3
        "1.2.3+build.2",
        "1.2.3",
        "1.2.3+build.10",
        "1.2.3-rc.1",
        "0.9.0",
        // not versions
        "1",
        "16",
        "1.2.3.4",
        "01.2.3",
        "latest",
        "stable",
        "main",
        "edge",
        "nightly-2024-01-01",
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    // attached artifacts: never selected
    for suffix in [".sig", ".att", ".sbom", ""] {
        tags.push(format!("sha256-{HEX}{suffix}"));
    }
    // look-alikes, which are ordinary tags
    tags.push(format!("sha256-{}.sig", &HEX[..63]));
    tags.push(format!("sha256-{}.sig", HEX.to_uppercase()));
    tags.push(format!("sha256-{HEX}.sig.bak"));
    tags
}

fn config(yaml: &str) -> TagsConfig {
    serde_yaml::from_str(yaml).expect("test config parses")
}

#[derive(serde::Serialize)]
struct Selection {
    rule: String,
    selected: Vec<String>,
}

#[test]
fn selection_snapshot() {
    let rules = [
        r#"semver: ">=2.50, <3""#,
        r#"semver: "^16""#,
        r#"semver: ">=16.4.0-alpine, <16.5""#,
        r#"semver: ">=3.0.0-rc.1""#,
        r#"semver: "=1.2.3""#,
        r#"regex: ["v2\\.5\\d\\..*"]"#,
        r#"regex: [".*"]"#,
        r#"{regex: ["16\\..*-alpine", "1\\.25.*"], exclude: ["16\\.3.*"]}"#,
        r#"{regex: ["v.*"], exclude: [".*-rc.*"]}"#,
        r#"{semver: ">=2.50, <3", regex: ["v2\\.5\\d\\..*"], exclude: [".*-rc.*"], newest: 3}"#,
        r#"newest: 3"#,
        r#"newest: 100"#,
        r#"{semver: ">=1", newest: 4}"#,
        r#"{regex: ["1\\.2\\.3.*"], newest: 2}"#,
        r#"{regex: ["latest", "stable", "main"], newest: 2}"#,
        r#"regex: ["sha256-.*"]"#,
    ];
    let tags = tags();
    assert!(tags.len() >= 40, "{} tags", tags.len());
    let cases: Vec<Selection> = rules
        .iter()
        .map(|yaml| {
            let rule = TagRule::new(&config(yaml)).expect("test rule is valid");
            Selection {
                rule: rule.to_string(),
                selected: rule.select(&tags),
            }
        })
        .collect();
    insta::assert_yaml_snapshot!(cases);
}

#[test]
fn every_tag_but_attached_ones_with_regex_dot_star() {
    let tags = tags();
    let rule = TagRule::new(&config(r#"regex: [".*"]"#)).unwrap();
    let selected = rule.select(&tags);
    assert_eq!(selected.len(), tags.len() - 4);
    assert!(selected.iter().all(|t| !is_attached_tag(t)));
}

#[test]
fn order_is_the_same_with_or_without_newest_and_input_order() {
    let tags = tags();
    let all = TagRule::new(&config("newest: 1000")).unwrap().select(&tags);
    let mut reversed = tags.clone();
    reversed.reverse();
    let some = TagRule::new(&config("newest: 5"))
        .unwrap()
        .select(&reversed);
    assert_eq!(some, all[..5]);
    let every = TagRule::new(&config(r#"regex: [".*"]"#))
        .unwrap()
        .select(&reversed);
    assert_eq!(every, all);
}

#[test]
fn a_tag_listed_twice_is_selected_once() {
    let tags: Vec<String> = ["1.0.0", "2.0.0", "1.0.0", "latest", "latest"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    let rule = TagRule::new(&config("newest: 3")).unwrap();
    assert_eq!(rule.select(&tags), ["2.0.0", "1.0.0", "latest"]);
}

#[test]
fn patterns_match_the_whole_tag() {
    let rule = TagRule::new(&config(r#"{regex: ["1\\.2"], exclude: ["rc"]}"#)).unwrap();
    assert!(rule.matches("1.2"));
    assert!(!rule.matches("1.2.3"));
    assert!(!rule.matches("v1.2"));
    let rule = TagRule::new(&config(r#"{regex: ["1\\..*"], exclude: ["rc"]}"#)).unwrap();
    assert!(rule.matches("1.2-rc"), "`rc` excludes only the tag `rc`");
    // an alternation is anchored as a whole
    let rule = TagRule::new(&config(r#"regex: ["a|b"]"#)).unwrap();
    assert!(rule.matches("a") && rule.matches("b"));
    assert!(!rule.matches("ab") && !rule.matches("xa") && !rule.matches("bx"));
}

#[test]
fn tags_that_are_not_versions_never_satisfy_semver() {
    let rule = TagRule::new(&config(r#"semver: "*""#)).unwrap();
    for tag in ["latest", "1", "1.2.3.4", "main"] {
        assert!(!rule.matches(tag), "{tag}");
    }
    assert!(rule.matches("1.2"));
    assert!(!rule.matches("1.2-alpine"), "`*` matches no pre-release");
}

#[test]
fn tag_version_table() {
    let tags = [
        "v2.53.1",
        "2.53.1",
        "2.53",
        "v3.19",
        "1.2.3-rc.1",
        "16.4-alpine",
        "1.25.3-debian",
        "1.2.3+build.5",
        "1.2-rc.1+b",
        "0.0.0",
        "1",
        "v1",
        "1.2.3.4",
        "01.2.3",
        "1.02",
        "1.2.",
        ".1.2",
        "1.2.3-",
        "V1.2.3",
        "vv1.2.3",
        "v",
        "",
        "latest",
        "stable",
        "main",
    ];
    let table: Vec<String> = tags
        .iter()
        .map(|t| {
            let v = tag_version(t).map_or("not a version".to_string(), |v| v.to_string());
            format!("{t:?} -> {v}")
        })
        .collect();
    insta::assert_snapshot!(table.join("\n"));
}

#[test]
fn attached_tags() {
    for suffix in [".sig", ".att", ".sbom", ""] {
        assert!(
            is_attached_tag(&format!("sha256-{HEX}{suffix}")),
            "{suffix}"
        );
    }
    for tag in [
        format!("sha256-{}.sig", &HEX[..63]),
        format!("sha256-{HEX}0"),
        format!("sha256-{HEX}.sig2"),
        format!("sha256-{}", HEX.to_uppercase()),
        format!("sha512-{HEX}"),
        format!("sha256-{}é.sig", &HEX[..63]),
        format!("sha256-{}éé", &HEX[..63]),
        "sha256-".to_string(),
        "latest".to_string(),
    ] {
        assert!(!is_attached_tag(&tag), "{tag}");
    }
}

#[test]
fn display() {
    let rule = TagRule::new(&config(
        r#"{semver: ">=2.50, <3", regex: ["v2\\.5\\d\\..*"], exclude: [".*-rc.*"], newest: 3}"#,
    ))
    .unwrap();
    assert_eq!(
        rule.to_string(),
        r#"semver ">=2.50, <3", regex ["v2\\.5\\d\\..*"], exclude [".*-rc.*"], newest 3"#
    );
    assert_eq!(
        TagRule::new(&config("newest: 2")).unwrap().to_string(),
        "newest 2"
    );
}

#[derive(serde::Serialize)]
struct Refused {
    input: &'static str,
    error: String,
}

#[test]
fn error_messages() {
    let inputs = [
        "{}",
        r#"exclude: [".*-rc.*"]"#,
        "regex: []",
        "newest: 0",
        r#"{semver: ">=1", newest: 0}"#,
        r#"regex: ["v2\\.5\\d\\..*("]"#,
        r#"regex: [".*", "[a-"]"#,
        r#"{regex: [".*"], exclude: ["*-rc"]}"#,
        r#"regex: ["\\p{Greek"]"#,
        r#"regex: ["a{5,2}"]"#,
        r#"regex: ["(?<x>a)\\k<y>"]"#,
        r#"semver: ">=2.50, <3x""#,
        r#"semver: """#,
        r#"semver: "latest""#,
        r#"semver: "1.2.3.4""#,
        "newest: -1",
        "newest: three",
        r#"regex: "v1.*""#,
        "tag: v1",
        r#"{semver: "^1", Newest: 3}"#,
    ];
    let refused: Vec<Refused> = inputs
        .iter()
        .map(|input| {
            let error = match serde_yaml::from_str::<TagsConfig>(input) {
                Err(e) => format!("parse: {e}"),
                Ok(c) => match TagRule::new(&c) {
                    Err(e) => e.to_string(),
                    Ok(rule) => panic!("{input} was accepted as {rule}"),
                },
            };
            assert!(!error.contains('\n'), "one line: {error}");
            Refused { input, error }
        })
        .collect();
    insta::assert_yaml_snapshot!(refused);
}

#[test]
fn config_schema() {
    insta::assert_json_snapshot!(schemars::schema_for!(TagsConfig));
}

#[test]
fn config_round_trips() {
    let c = config(r#"{semver: ">=2.50, <3", regex: ["v2\\.5\\d\\..*"], newest: 3}"#);
    let back: TagsConfig = serde_yaml::from_str(&serde_yaml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    assert_eq!(
        serde_yaml::to_string(&TagsConfig::default()).unwrap(),
        "{}\n"
    );
}
