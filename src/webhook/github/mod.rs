//! GitHub's webhook bodies: what a receiver written for GitHub gets.
//!
//! Owns the mapping from a hookfleet event (its type and the payload stored
//! with the delivery) plus the host's URLs ([`Site`]) to GitHub's event name
//! (`X-GitHub-Event`, [`event_name`]) and its exact body ([`body`]): `push`,
//! `create`, `delete` and `ping` bodies carry exactly the fields of GitHub's
//! events as octokit's schemas define them, each with GitHub's type, so a
//! receiver that validates strictly accepts them. hookfleet's own facts (push
//! id, pushed at, push options, totals, truncation) are never body fields: they
//! travel in the bus event and in `X-Hookfleet-*` headers ([`hookfleet_headers`]).
//!
//! Event names:
//! - `git.push` → `push`;
//! - `git.branch.created`, `git.tag.created` → `create`; `*.deleted` → `delete`;
//! - `git.branch.force_pushed` → `force_push`, a `push` body (GitHub has no such
//!   event: its receivers ignore the name, hookfleet-aware ones get a body they
//!   already parse; the same update also came as a `push` with `forced: true`);
//! - `git.push.bulk` → `hookfleet_push_bulk`, hookfleet's own bulk body with
//!   GitHub's `repository`, `pusher`, `sender` (GitHub has no equivalent, and
//!   its receivers ignore unknown names);
//! - [`EV_PING`] → `ping`; any other type keeps its name and its stored body.
//!
//! What hookfleet cannot know is filled with GitHub's "nothing" values: counts
//! 0, `description`/`homepage`/`language`/`license` null, `private: true`,
//! `created_at` the Unix epoch (unknown), emails null. Numeric ids are derived
//! from names ([`stable_id`]) so they stay the same across pushes and workers.
//!
//! Pure: no I/O, no clock. The same stored payload always renders the same
//! bytes, so a retry or a redelivery is signed the same.
//!
//! # Layout
//! - `mod.rs`: the event names and the choice of body;
//! - `git_events`: the `push`, `create`, `delete` and bulk bodies, with the
//!   repository and commit objects;
//! - `ping`: the ping body and what a ping delivery stores;
//! - `accounts`: user and organization objects; `site`: the URL bases;
//! - `headers`: the `X-Hookfleet-*` headers; `values`: ids and encodings.

mod accounts;
mod git_events;
mod headers;
mod ping;
mod site;
mod values;

use serde_json::Value;

use self::git_events::PayloadCtx;
pub(crate) use self::headers::hookfleet_headers;
pub(crate) use self::ping::{PingFacts, ping_payload};
pub use self::site::Site;

/// hookfleet event type of a ping delivery (`X-Hookfleet-Event`).
pub(crate) const EV_PING: &str = "webhook.ping";
/// `X-GitHub-Event` of `git.push.bulk`: hookfleet's own, GitHub has none.
pub(crate) const GH_PUSH_BULK: &str = "hookfleet_push_bulk";
/// `X-GitHub-Event` of `git.branch.force_pushed`: a `push` body under a name
/// GitHub receivers ignore.
pub(crate) const GH_FORCE_PUSH: &str = "force_push";

/// `X-GitHub-Event` of a hookfleet event type (see the module doc).
pub(crate) fn event_name(event_type: &str) -> &str {
    match event_type {
        "git.push" => "push",
        "git.push.bulk" => GH_PUSH_BULK,
        "git.branch.force_pushed" => GH_FORCE_PUSH,
        EV_PING => "ping",
        t if t.starts_with("git.") && t.ends_with(".created") => "create",
        t if t.starts_with("git.") && t.ends_with(".deleted") => "delete",
        t => t,
    }
}

/// The body of a delivery of `event_type` whose stored payload is `payload`.
pub fn body(event_type: &str, payload: &Value, site: &Site) -> Value {
    let ctx = PayloadCtx::new(payload, site);
    match event_name(event_type) {
        "push" | GH_FORCE_PUSH => ctx.push(),
        "create" => ctx.create(event_type),
        "delete" => ctx.delete(event_type),
        "ping" => ping::ping(payload, site),
        GH_PUSH_BULK => ctx.bulk(),
        _ => payload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::git_events::{FALLBACK_BRANCH, SITE_OWNER};
    use super::values::stable_id;
    use super::*;
    use crate::config::Config;

    fn site() -> Site {
        let mut c = Config::load_from(None, Vec::new()).unwrap();
        c.push.compare_base_url = "https://git.test".into();
        Site::new(&c)
    }

    fn stored() -> Value {
        json!({
            "ref": "refs/heads/feature",
            "before": "0".repeat(40),
            "after": "a".repeat(40),
            "created": true, "deleted": false, "forced": false,
            "base_ref": null,
            "compare": "https://git.test/org/app/compare/000000000000...aaaaaaaaaaaa",
            "commits": [{
                "id": "a".repeat(40), "tree_id": "b".repeat(40), "distinct": true,
                "message": "one", "timestamp": "2024-01-02T03:04:05+01:00",
                "url": "https://git.test/org/app/commit/aaa",
                "author": {"name": "Ann", "email": "ann@example.com"},
                "committer": {"name": "Ann", "email": "ann@example.com"},
                "added": ["a.txt"], "removed": [], "modified": [], "paths_omitted": 3,
            }],
            "head_commit": null,
            "pusher": {"name": "ann"}, "sender": {"login": "ann"},
            "repository": {"name": "app", "full_name": "org/app", "owner": "org",
                           "url": "https://git.test/org/app", "default_branch": "trunk"},
            "push_id": "0190a0a0-0000-7000-8000-000000000000",
            "pushed_at": "2024-01-02T03:04:05.123Z",
            "push_options": ["ci.skip", "note=a b"],
            "total_commits_count": 1,
            "commits_truncated": true, "commits_omitted": 2,
        })
    }

    #[test]
    fn event_names() {
        assert_eq!(event_name("git.push"), "push");
        assert_eq!(event_name("git.branch.created"), "create");
        assert_eq!(event_name("git.tag.created"), "create");
        assert_eq!(event_name("git.branch.deleted"), "delete");
        assert_eq!(event_name("git.tag.deleted"), "delete");
        assert_eq!(event_name("git.branch.force_pushed"), "force_push");
        assert_eq!(event_name("git.push.bulk"), "hookfleet_push_bulk");
        assert_eq!(event_name(EV_PING), "ping");
        assert_eq!(event_name("webhook.disabled"), "webhook.disabled");
    }

    #[test]
    fn push_body_has_no_hookfleet_fields() {
        let b = body("git.push", &stored(), &site());
        let keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "push_id",
            "pushed_at",
            "push_options",
            "total_commits_count",
            "commits_truncated",
            "commits_omitted",
        ] {
            assert!(!keys.contains(&k), "{k} in {keys:?}");
        }
        assert!(b["commits"][0].get("paths_omitted").is_none());
        assert_eq!(b["ref"], "refs/heads/feature");
        assert_eq!(b["pusher"], json!({"name": "ann", "email": null}));
        assert_eq!(b["sender"]["login"], "ann");
        let r = &b["repository"];
        assert_eq!(r["full_name"], "org/app");
        assert_eq!(r["owner"]["login"], "org");
        assert_eq!(r["owner"]["type"], "Organization");
        assert_eq!(r["default_branch"], "trunk");
        assert_eq!(r["master_branch"], "trunk");
        assert_eq!(r["html_url"], "https://git.test/org/app");
        assert_eq!(r["clone_url"], "https://git.test/org/app.git");
        assert_eq!(r["ssh_url"], "git@git.test:org/app.git");
        assert_eq!(r["url"], "https://git.test/api/v3/repos/org/app");
        assert_eq!(r["pushed_at"], 1_704_164_645);
        assert_eq!(r["created_at"], 0);
        assert_eq!(b["organization"]["login"], "org");
        // Force pushes get the same body under their own name.
        assert_eq!(body("git.branch.force_pushed", &stored(), &site()), b);
    }

    #[test]
    fn create_and_delete_use_short_refs() {
        let c = body("git.branch.created", &stored(), &site());
        assert_eq!(c["ref"], "feature");
        assert_eq!(c["ref_type"], "branch");
        assert_eq!(c["master_branch"], "trunk");
        assert_eq!(c["pusher_type"], "user");
        assert_eq!(c["description"], Value::Null);
        assert_eq!(c["repository"]["pushed_at"], "2024-01-02T03:04:05Z");
        assert!(c["repository"].get("master_branch").is_none());
        let mut tag = stored();
        tag["ref"] = json!("refs/tags/v1.0");
        let d = body("git.tag.deleted", &tag, &site());
        assert_eq!(d["ref"], "v1.0");
        assert_eq!(d["ref_type"], "tag");
        assert!(d.get("master_branch").is_none());
        let t = body("git.tag.created", &tag, &site());
        assert_eq!(
            (t["ref"].as_str(), t["ref_type"].as_str()),
            (Some("v1.0"), Some("tag"))
        );
    }

    #[test]
    fn own_namespace_is_a_user_and_bare_names_belong_to_the_site() {
        let mut p = stored();
        p["repository"] = json!({"full_name": "ann/dots", "name": "dots"});
        let b = body("git.push", &p, &site());
        assert_eq!(b["repository"]["owner"]["type"], "User");
        assert!(b.get("organization").is_none());
        p["repository"] = json!({"full_name": "solo", "name": "solo"});
        let b = body("git.push", &p, &site());
        assert_eq!(b["repository"]["owner"]["login"], SITE_OWNER);
        assert_eq!(b["repository"]["default_branch"], FALLBACK_BRANCH);
    }

    #[test]
    fn bulk_keeps_hookfleet_body_with_github_people() {
        let p = json!({"push_id": "x", "refs": [], "refs_count": 30, "pusher": {"name": "ann"},
                       "sender": {"login": "ann"}, "repository": {"full_name": "org/app"}});
        let b = body("git.push.bulk", &p, &site());
        assert_eq!(b["refs_count"], 30);
        assert_eq!(b["repository"]["id"], stable_id("repo", "org/app"));
        assert_eq!(b["sender"]["type"], "User");
    }

    #[test]
    fn ping_body() {
        let f = PingFacts {
            id: 7,
            repository_pattern: "org/*".into(),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec!["push".into(), "tag".into(), "branch".into()],
            content_type: "json".into(),
            active: true,
            has_secret: true,
            created_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            updated_at: chrono::DateTime::from_timestamp(60, 0).unwrap(),
            sender: Some("root".into()),
        };
        let b = body(EV_PING, &ping_payload(&f), &site());
        assert_eq!(b["hook_id"], 7);
        assert_eq!(b["hook"]["events"], json!(["push", "create", "delete"]));
        assert_eq!(b["hook"]["type"], "Organization");
        assert_eq!(b["hook"]["config"]["secret"], "********");
        assert_eq!(b["hook"]["updated_at"], "1970-01-01T00:01:00Z");
        assert_eq!(b["sender"]["login"], "root");
        assert!(!b.to_string().contains("s3cret"));
    }

    #[test]
    fn headers_carry_hookfleet_facts() {
        let h = hookfleet_headers(&stored());
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            get("X-Hookfleet-Push-Id"),
            Some("0190a0a0-0000-7000-8000-000000000000")
        );
        assert_eq!(
            get("X-Hookfleet-Pushed-At"),
            Some("2024-01-02T03:04:05.123Z")
        );
        assert_eq!(
            get("X-Hookfleet-Push-Options"),
            Some("ci.skip,note%3Da%20b")
        );
        assert_eq!(get("X-Hookfleet-Total-Commits"), Some("1"));
        assert_eq!(get("X-Hookfleet-Commits-Omitted"), Some("2"));
        assert_eq!(get("X-Hookfleet-Paths-Truncated"), None);
    }
}
