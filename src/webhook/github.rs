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

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::repository::owner_of;

/// hookfleet event type of a ping delivery (`X-Hookfleet-Event`).
pub const EV_PING: &str = "webhook.ping";
/// `X-GitHub-Event` of `git.push.bulk`: hookfleet's own, GitHub has none.
pub const GH_PUSH_BULK: &str = "hookfleet_push_bulk";
/// `X-GitHub-Event` of `git.branch.force_pushed`: a `push` body under a name
/// GitHub receivers ignore.
pub const GH_FORCE_PUSH: &str = "force_push";
/// Login of the account that owns a repository whose name has no owner segment
/// (a repository directly under `hook.repositories_root`): the system user that
/// owns repositories on a typical git host.
pub const SITE_OWNER: &str = "git";
/// Login used when the pusher is unknown: GitHub's own placeholder account.
pub const UNKNOWN_USER: &str = "ghost";
/// `master_branch` and `default_branch` when the stored event does not name
/// the default branch (a HEAD that could not be read, an older event).
pub const FALLBACK_BRANCH: &str = "main";

/// The bases of the URLs in bodies, resolved from `[site]` once (empty keys
/// derived, see `SiteConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Web pages.
    pub html: String,
    /// API.
    pub api: String,
    /// `clone_url` base.
    pub clone: String,
    /// `user@host` of `ssh_url`.
    pub ssh_host: String,
    /// Host of `git_url`.
    pub host: String,
}

impl Site {
    /// The site of `config` (`[site]`, falling back to `push.compare_base_url`).
    pub fn new(config: &Config) -> Site {
        let s = &config.site;
        let or = |v: &str, d: String| {
            if v.is_empty() {
                d
            } else {
                v.trim_end_matches('/').to_string()
            }
        };
        let html = or(&s.html_url, config.push.compare_base_url.clone());
        let host = url::Url::parse(&html)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "localhost".to_string());
        Site {
            api: or(&s.api_url, format!("{html}/api/v3")),
            clone: or(&s.clone_url, html.clone()),
            ssh_host: or(&s.ssh_host, format!("git@{host}")),
            html,
            host,
        }
    }
}

/// `X-GitHub-Event` of a hookfleet event type (see the module doc).
pub fn event_name(event_type: &str) -> &str {
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
    let ctx = Ctx::new(payload, site);
    match event_name(event_type) {
        "push" | GH_FORCE_PUSH => ctx.push(),
        "create" => ctx.create(event_type),
        "delete" => ctx.delete(event_type),
        "ping" => ping(payload, site),
        GH_PUSH_BULK => ctx.bulk(),
        _ => payload.clone(),
    }
}

/// hookfleet's facts of a delivery, as `X-Hookfleet-*` headers: `Push-Id`,
/// `Pushed-At`, `Push-Options` (each option percent-encoded, comma-separated),
/// `Total-Commits`, `Commits-Omitted` (when the list was cut),
/// `Paths-Truncated`, and for bulk events `Total-Refs` and `Refs-Omitted`.
/// Only those the stored payload has; values are made header-safe.
pub fn hookfleet_headers(payload: &Value) -> Vec<(String, String)> {
    let mut h = Vec::new();
    let mut put = |name: &str, v: String| h.push((format!("X-Hookfleet-{name}"), header_safe(&v)));
    let text = |k: &str| match payload.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if let Some(v) = text("push_id") {
        put("Push-Id", v);
    }
    if let Some(v) = text("pushed_at") {
        put("Pushed-At", v);
    }
    let options: Vec<String> = payload
        .get("push_options")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(pct).collect())
        .unwrap_or_default();
    if !options.is_empty() {
        put("Push-Options", options.join(","));
    }
    if let Some(v) = text("total_commits_count") {
        put("Total-Commits", v);
    }
    if flag(payload, "commits_truncated") {
        put(
            "Commits-Omitted",
            text("commits_omitted").unwrap_or_default(),
        );
    }
    if flag(payload, "paths_truncated") {
        put("Paths-Truncated", "true".into());
    }
    if let Some(v) = text("total_refs_count") {
        put("Total-Refs", v);
    }
    if flag(payload, "refs_truncated") {
        put("Refs-Omitted", text("refs_omitted").unwrap_or_default());
    }
    h
}

fn flag(payload: &Value, key: &str) -> bool {
    payload.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// A stable positive id for `name` in `space` (`user`, `repo`): the first 8
/// bytes of SHA-256, folded into 1..2^53 so JavaScript receivers keep it exact.
/// Users and organizations share the `user` space, as accounts do on GitHub.
pub fn stable_id(space: &str, name: &str) -> i64 {
    let digest = Sha256::digest(format!("{space}\0{name}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let n = u64::from_be_bytes(first) & ((1 << 53) - 1);
    // Masked to 53 bits, so it fits in an i64.
    i64::try_from(n.max(1)).unwrap_or(1)
}

/// GitHub's legacy global node id: base64 of `0{len}:{Type}{id}`.
pub fn node_id(kind: &str, id: i64) -> String {
    let prefix = match kind {
        "User" | "Bot" => "04",
        "Organization" => "012",
        _ => "010",
    };
    base64(format!("{prefix}:{kind}{id}").as_bytes())
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes all but RFC 3986's unreserved characters, so a name with
/// spaces or non-ASCII still makes a valid URL segment.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Each `/`-separated segment of `path` percent-encoded.
fn pct_path(path: &str) -> String {
    path.split('/').map(pct).collect::<Vec<_>>().join("/")
}

/// `v` if it is visible ASCII (a valid header value as is), else percent-encoded.
fn header_safe(v: &str) -> String {
    if v.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' ') {
        v.to_string()
    } else {
        pct(v)
    }
}

/// What every body of one stored payload shares.
struct Ctx<'a> {
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

impl<'a> Ctx<'a> {
    fn new(p: &'a Value, site: &'a Site) -> Ctx<'a> {
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
        Ctx {
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

    fn push(&self) -> Value {
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

    fn create(&self, event_type: &str) -> Value {
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

    fn delete(&self, event_type: &str) -> Value {
        let (r, ref_type) = self.short_ref(event_type);
        let mut m = Map::new();
        m.insert("ref".into(), json!(r));
        m.insert("ref_type".into(), json!(ref_type));
        m.insert("pusher_type".into(), json!("user"));
        self.common(&mut m, false);
        Value::Object(m)
    }

    /// hookfleet's bulk body, its people and repository in GitHub's shape.
    fn bulk(&self) -> Value {
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
        // What hookfleet has no notion of: GitHub's "nothing" values.
        let nothing = json!({
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
        });
        if let (Some(m), Value::Object(n)) = (r.as_object_mut(), nothing) {
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

fn rfc3339(d: chrono::DateTime<chrono::Utc>) -> String {
    d.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

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

/// GitHub's user object for `login` (`type`: `User` or `Organization`).
fn user(site: &Site, login: &str, kind: &str) -> Value {
    let id = stable_id("user", login);
    let l = pct(login);
    let u = format!("{}/users/{l}", site.api);
    json!({
        "login": login,
        "id": id,
        "node_id": node_id(kind, id),
        "avatar_url": format!("{}/avatars/u/{id}", site.html),
        "gravatar_id": "",
        "url": u,
        "html_url": format!("{}/{l}", site.html),
        "followers_url": format!("{u}/followers"),
        "following_url": format!("{u}/following{{/other_user}}"),
        "gists_url": format!("{u}/gists{{/gist_id}}"),
        "starred_url": format!("{u}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{u}/subscriptions"),
        "organizations_url": format!("{u}/orgs"),
        "repos_url": format!("{u}/repos"),
        "events_url": format!("{u}/events{{/privacy}}"),
        "received_events_url": format!("{u}/received_events"),
        "type": kind,
        "site_admin": false,
    })
}

/// GitHub's organization object for `login`.
fn organization(site: &Site, login: &str) -> Value {
    let id = stable_id("user", login);
    let l = pct(login);
    let o = format!("{}/orgs/{l}", site.api);
    json!({
        "login": login,
        "id": id,
        "node_id": node_id("Organization", id),
        "url": o,
        "html_url": format!("{}/{l}", site.html),
        "repos_url": format!("{o}/repos"),
        "events_url": format!("{o}/events"),
        "hooks_url": format!("{o}/hooks"),
        "issues_url": format!("{o}/issues"),
        "members_url": format!("{o}/members{{/member}}"),
        "public_members_url": format!("{o}/public_members{{/member}}"),
        "avatar_url": format!("{}/avatars/u/{id}", site.html),
        "description": null,
    })
}

/// GitHub's zen sayings; a ping carries one, picked by the hook's id.
const ZEN: [&str; 8] = [
    "Design for failure.",
    "Keep it logically awesome.",
    "Speak like a human.",
    "Non-blocking is better than blocking.",
    "Responsive is better than fast.",
    "Practicality beats purity.",
    "Favor focus over features.",
    "Mind your words, they are important.",
];

/// What a ping delivery stores: the subscription as it was when the ping was
/// enqueued (never its secret, only whether it has one) and who asked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PingFacts {
    /// Subscription id (`hook_id`).
    pub id: i64,
    /// Repository pattern.
    pub repository_pattern: String,
    /// Target URL.
    pub url: String,
    /// Event categories.
    pub events: Vec<String>,
    /// Body format.
    pub content_type: String,
    /// Whether deliveries are made.
    pub active: bool,
    /// Whether deliveries are signed.
    pub has_secret: bool,
    /// When the subscription was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it last changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Who asked for the ping, if known.
    pub sender: Option<String>,
}

/// The stored payload of a ping delivery.
pub fn ping_payload(facts: &PingFacts) -> Value {
    // Serialising a struct of strings, numbers and timestamps cannot fail.
    serde_json::to_value(facts).unwrap_or_default()
}

/// GitHub's `events` of a hook with hookfleet's categories: `push` → `push`,
/// `branch` and `tag` → `create`, `delete`; `*` → `["*"]`.
fn hook_events(categories: &[String]) -> Vec<&'static str> {
    if categories.iter().any(|c| c == "*") {
        return vec!["*"];
    }
    let mut out = Vec::new();
    for c in categories {
        let names: &[&'static str] = match c.as_str() {
            "push" => &["push"],
            "branch" | "tag" => &["create", "delete"],
            _ => &[],
        };
        for n in names {
            if !out.contains(n) {
                out.push(*n);
            }
        }
    }
    out
}

fn ping(payload: &Value, site: &Site) -> Value {
    let Ok(f) = serde_json::from_value::<PingFacts>(payload.clone()) else {
        // Not a ping we stored: send what was stored rather than nothing.
        return payload.clone();
    };
    let hook_url = format!("{}/hooks/{}", site.api, f.id);
    let kind = if f.repository_pattern.contains(['*', '?']) {
        "Organization"
    } else {
        "Repository"
    };
    let mut config = json!({
        "content_type": f.content_type,
        "url": f.url,
        "insecure_ssl": "0",
    });
    if f.has_secret
        && let Some(c) = config.as_object_mut()
    {
        // GitHub masks the secret the same way.
        c.insert("secret".into(), json!("********"));
    }
    let zen = ZEN[usize::try_from(f.id.unsigned_abs() % ZEN.len() as u64).unwrap_or(0)];
    let mut m = Map::new();
    m.insert("zen".into(), json!(zen));
    m.insert("hook_id".into(), json!(f.id));
    m.insert(
        "hook".into(),
        json!({
            "type": kind,
            "id": f.id,
            "name": "web",
            "active": f.active,
            "events": hook_events(&f.events),
            "config": config,
            "updated_at": rfc3339(f.updated_at),
            "created_at": rfc3339(f.created_at),
            "url": hook_url,
            "test_url": format!("{hook_url}/test"),
            "ping_url": format!("{hook_url}/pings"),
            "deliveries_url": format!("{hook_url}/deliveries"),
            "last_response": { "code": null, "status": "unused", "message": null },
        }),
    );
    if let Some(s) = f.sender.as_deref().filter(|s| !s.is_empty()) {
        m.insert("sender".into(), user(site, s, "User"));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ids_are_stable_positive_and_js_safe() {
        let a = stable_id("repo", "org/app");
        assert_eq!(a, stable_id("repo", "org/app"));
        assert_ne!(a, stable_id("repo", "org/app2"));
        assert!(a > 0 && a < (1 << 53));
        assert_eq!(base64(b"04:User1"), "MDQ6VXNlcjE=");
        assert_eq!(node_id("User", 1), "MDQ6VXNlcjE=");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
