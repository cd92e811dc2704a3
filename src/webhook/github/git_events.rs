//! The bodies of git events: `push` (also under `force_push`), `create`,
//! `delete`, and hookfleet's bulk push with GitHub's people and repository.

use serde_json::{Map, Value, json};

use super::accounts::{organization, user};
use super::site::Site;
use super::values::{flag, node_id, pct_path, rfc3339, stable_id};
use crate::repository::owner_of;

/// Login of the account that owns a repository whose name has no owner segment
/// (a repository directly under `hook.repositories_root`): the system user that
/// owns repositories on a typical git host.
pub(crate) const SITE_OWNER: &str = "git";
/// Login used when the pusher is unknown: GitHub's own placeholder account.
pub(crate) const UNKNOWN_USER: &str = "ghost";
/// `master_branch` and `default_branch` when the stored event does not name
/// the default branch (a HEAD that could not be read, an older event).
pub(crate) const FALLBACK_BRANCH: &str = "main";

/// What every body of one stored payload shares.
pub(super) struct PayloadCtx<'a> {
    p: &'a Value,
    site: &'a Site,
    full_name: String,
    name: String,
    owner: String,
    /// The owner is an organization (so `organization` is sent).
    org: bool,
    sender: String,
    default_branch: String,
    pushed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl<'a> PayloadCtx<'a> {
    pub(super) fn new(p: &'a Value, site: &'a Site) -> PayloadCtx<'a> {
        let repo = p.get("repository");
        let field = |k: &str| {
            repo.and_then(|r| r.get(k))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let full_name = field("full_name").unwrap_or_else(|| "unknown".to_string());
        let name = field("name").unwrap_or_else(|| {
            full_name
                .rsplit('/')
                .next()
                .unwrap_or(&full_name)
                .to_string()
        });
        let sender = p
            .get("sender")
            .and_then(|s| s.get("login"))
            .or_else(|| p.get("pusher").and_then(|s| s.get("name")))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(UNKNOWN_USER)
            .to_string();
        let (owner, org) = match field("owner").or_else(|| owner_of(&full_name).map(str::to_string))
        {
            // A namespace named after the pusher is their own; any other is
            // shared by the repositories under it: an organization.
            Some(o) => {
                let org = o != sender;
                (o, org)
            }
            None => (SITE_OWNER.to_string(), false),
        };
        let pushed_at = p
            .get("pushed_at")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&chrono::Utc));
        PayloadCtx {
            p,
            site,
            default_branch: field("default_branch").unwrap_or_else(|| FALLBACK_BRANCH.to_string()),
            full_name,
            name,
            owner,
            org,
            sender,
            pushed_at,
        }
    }

    fn str(&self, k: &str) -> String {
        self.p
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    fn bool(&self, k: &str) -> bool {
        flag(self.p, k)
    }

    /// The fields every event shares: `repository`, `sender`, `organization`.
    fn common(&self, m: &mut Map<String, Value>, push_style: bool) {
        m.insert("repository".into(), self.repository(push_style));
        m.insert("sender".into(), user(self.site, &self.sender, "User"));
        if self.org {
            m.insert("organization".into(), organization(self.site, &self.owner));
        }
    }

    fn pusher(&self) -> Value {
        json!({ "name": self.sender, "email": null })
    }

    pub(super) fn push(&self) -> Value {
        let mut m = Map::new();
        m.insert("ref".into(), json!(self.str("ref")));
        let zero = "0".repeat(40);
        for k in ["before", "after"] {
            let v = self.str(k);
            m.insert(k.into(), json!(if v.is_empty() { zero.clone() } else { v }));
        }
        for k in ["created", "deleted", "forced"] {
            m.insert(k.into(), json!(self.bool(k)));
        }
        let base_ref = self.p.get("base_ref").and_then(Value::as_str);
        m.insert("base_ref".into(), json!(base_ref));
        m.insert("compare".into(), json!(self.str("compare")));
        let commits: Vec<Value> = self
            .p
            .get("commits")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(commit).collect())
            .unwrap_or_default();
        m.insert("commits".into(), Value::Array(commits));
        let head = match self.p.get("head_commit") {
            Some(c @ Value::Object(_)) => commit(c),
            _ => Value::Null,
        };
        m.insert("head_commit".into(), head);
        m.insert("pusher".into(), self.pusher());
        self.common(&mut m, true);
        Value::Object(m)
    }

    /// `ref` without its `refs/heads/` or `refs/tags/` prefix, and `ref_type`.
    fn short_ref(&self, event_type: &str) -> (String, &'static str) {
        let full = self.str("ref");
        let tag = event_type.starts_with("git.tag.") || full.starts_with("refs/tags/");
        let short = full
            .strip_prefix(if tag { "refs/tags/" } else { "refs/heads/" })
            .unwrap_or(&full)
            .to_string();
        (short, if tag { "tag" } else { "branch" })
    }

    pub(super) fn create(&self, event_type: &str) -> Value {
        let (r, ref_type) = self.short_ref(event_type);
        let mut m = Map::new();
        m.insert("ref".into(), json!(r));
        m.insert("ref_type".into(), json!(ref_type));
        m.insert("master_branch".into(), json!(self.default_branch));
        m.insert("description".into(), Value::Null);
        m.insert("pusher_type".into(), json!("user"));
        self.common(&mut m, false);
        Value::Object(m)
    }

    pub(super) fn delete(&self, event_type: &str) -> Value {
        let (r, ref_type) = self.short_ref(event_type);
        let mut m = Map::new();
        m.insert("ref".into(), json!(r));
        m.insert("ref_type".into(), json!(ref_type));
        m.insert("pusher_type".into(), json!("user"));
        self.common(&mut m, false);
        Value::Object(m)
    }

    /// hookfleet's bulk body, its people and repository in GitHub's shape.
    pub(super) fn bulk(&self) -> Value {
        let mut m = self.p.as_object().cloned().unwrap_or_default();
        m.insert("pusher".into(), self.pusher());
        self.common(&mut m, true);
        Value::Object(m)
    }

    /// GitHub's repository object. `push_style`: as in `push` events, with
    /// `created_at`/`pushed_at` as Unix seconds and `master_branch`,
    /// `stargazers` and `organization` (GitHub sends those there only).
    fn repository(&self, push_style: bool) -> Value {
        let site = self.site;
        let full = pct_path(&self.full_name);
        let a = format!("{}/repos/{full}", site.api);
        let id = stable_id("repo", &self.full_name);
        let pushed = self.pushed_at.map(|d| d.timestamp());
        let (created_at, pushed_at) = if push_style {
            (json!(0), json!(pushed))
        } else {
            (
                json!("1970-01-01T00:00:00Z"),
                json!(self.pushed_at.map(rfc3339)),
            )
        };
        let updated_at = self
            .pushed_at
            .map_or_else(|| "1970-01-01T00:00:00Z".to_string(), rfc3339);
        let owner_type = if self.org { "Organization" } else { "User" };
        let mut r = json!({
            "id": id,
            "node_id": node_id("Repository", id),
            "name": self.name,
            "full_name": self.full_name,
            "private": true,
            "owner": user(site, &self.owner, owner_type),
            "html_url": format!("{}/{full}", site.html),
            "description": null,
            "fork": false,
            "url": a,
            "created_at": created_at,
            "updated_at": updated_at,
            "pushed_at": pushed_at,
            "git_url": format!("git://{}/{full}.git", site.host),
            "ssh_url": format!("{}:{}.git", site.ssh_host, self.full_name),
            "clone_url": format!("{}/{full}.git", site.clone),
            "svn_url": format!("{}/{full}", site.html),
            "default_branch": self.default_branch,
            "custom_properties": {},
        });
        if let (Some(m), Value::Object(n)) = (r.as_object_mut(), nothing()) {
            m.extend(n);
            for (k, path) in API_PATHS {
                m.insert(k.into(), json!(format!("{a}{path}")));
            }
        }
        if push_style && let Some(m) = r.as_object_mut() {
            m.insert("stargazers".into(), json!(0));
            m.insert("master_branch".into(), json!(self.default_branch));
            if self.org {
                m.insert("organization".into(), json!(self.owner));
            }
        }
        r
    }
}

/// The fields of a repository object hookfleet has no notion of, with GitHub's
/// "nothing" values.
fn nothing() -> Value {
    json!({
        "homepage": null,
        "size": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "language": null,
        "has_issues": false,
        "has_projects": false,
        "has_downloads": false,
        "has_wiki": false,
        "has_pages": false,
        "has_discussions": false,
        "forks_count": 0,
        "mirror_url": null,
        "archived": false,
        "disabled": false,
        "open_issues_count": 0,
        "license": null,
        "allow_forking": false,
        "is_template": false,
        "web_commit_signoff_required": false,
        "topics": [],
        "visibility": "private",
        "forks": 0,
        "open_issues": 0,
        "watchers": 0,
    })
}

/// The API links of a repository object: key and path under its API URL.
const API_PATHS: [(&str, &str); 36] = [
    ("forks_url", "/forks"),
    ("keys_url", "/keys{/key_id}"),
    ("collaborators_url", "/collaborators{/collaborator}"),
    ("teams_url", "/teams"),
    ("hooks_url", "/hooks"),
    ("issue_events_url", "/issues/events{/number}"),
    ("events_url", "/events"),
    ("assignees_url", "/assignees{/user}"),
    ("branches_url", "/branches{/branch}"),
    ("tags_url", "/tags"),
    ("blobs_url", "/git/blobs{/sha}"),
    ("git_tags_url", "/git/tags{/sha}"),
    ("git_refs_url", "/git/refs{/sha}"),
    ("trees_url", "/git/trees{/sha}"),
    ("statuses_url", "/statuses/{sha}"),
    ("languages_url", "/languages"),
    ("stargazers_url", "/stargazers"),
    ("contributors_url", "/contributors"),
    ("subscribers_url", "/subscribers"),
    ("subscription_url", "/subscription"),
    ("commits_url", "/commits{/sha}"),
    ("git_commits_url", "/git/commits{/sha}"),
    ("comments_url", "/comments{/number}"),
    ("issue_comment_url", "/issues/comments{/number}"),
    ("contents_url", "/contents/{+path}"),
    ("compare_url", "/compare/{base}...{head}"),
    ("merges_url", "/merges"),
    ("archive_url", "/{archive_format}{/ref}"),
    ("downloads_url", "/downloads"),
    ("issues_url", "/issues{/number}"),
    ("pulls_url", "/pulls{/number}"),
    ("milestones_url", "/milestones{/number}"),
    (
        "notifications_url",
        "/notifications{?since,all,participating}",
    ),
    ("labels_url", "/labels{/name}"),
    ("releases_url", "/releases{/id}"),
    ("deployments_url", "/deployments"),
];

/// A commit of the bus event in GitHub's shape: hookfleet's extra fields
/// (`paths_omitted`) dropped, missing ones given their empty value.
fn commit(c: &Value) -> Value {
    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
    let person = |k: &str| {
        let p = c.get(k);
        let f = |f: &str| p.and_then(|p| p.get(f)).and_then(Value::as_str);
        json!({ "name": f("name").unwrap_or_default(), "email": f("email") })
    };
    let list = |k: &str| {
        let v: Vec<&str> = c
            .get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        json!(v)
    };
    json!({
        "id": s("id"),
        "tree_id": s("tree_id"),
        "distinct": c.get("distinct").and_then(Value::as_bool).unwrap_or(true),
        "message": s("message"),
        "timestamp": s("timestamp"),
        "url": s("url"),
        "author": person("author"),
        "committer": person("committer"),
        "added": list("added"),
        "removed": list("removed"),
        "modified": list("modified"),
    })
}
