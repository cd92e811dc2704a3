//! GitHub's account objects (users and organizations) for a login.

use serde_json::{Value, json};

use super::site::Site;
use super::values::{node_id, pct, stable_id};

/// GitHub's user object for `login` (`type`: `User` or `Organization`).
pub(super) fn user(site: &Site, login: &str, kind: &str) -> Value {
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
pub(super) fn organization(site: &Site, login: &str) -> Value {
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
