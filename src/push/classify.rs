//! What a ref update means, read from the repository: branch or tag, created,
//! deleted, forced, and the commits it brought.
//!
//! Owns the rules of the push payload's git facts:
//! - `forced`: a branch whose old tip is not an ancestor of the new one
//!   (`merge-base --is-ancestor`); a tag (or other non-branch ref) that moved
//!   (git requires `--force` to move a tag).
//! - commits of an updated branch: `before..after` (for a forced push, the
//!   commits of the new history not in the old). Of a created branch: the commits
//!   of `after` not reachable from any other ref. The hook runs after the ref
//!   moved, and the handler maybe much later, so ranges use object ids, never the
//!   pushed ref's name, and "other refs" are every ref except the pushed one,
//!   read by `for-each-ref` (not `--all`, which would include `HEAD`, usually an
//!   alias of the pushed branch).
//! - `distinct`: the commit is not reachable from another ref (as of reading).
//! - tags, deletions and refs outside `refs/heads/`: no commit list; a tag's
//!   `head_commit` is the commit it peels to.
//! - at most `push.max_commits` commits are listed (the newest, oldest first);
//!   `total_commits` is the true count.
//!
//! Per ref it runs a handful of git commands (never one per commit). It never
//! writes to the repository.

use serde::{Deserialize, Serialize};

use super::git::{GitError, GitRepo};
use super::update::RefUpdate;

/// What kind of ref was updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefKind {
    /// `refs/heads/*`.
    Branch,
    /// `refs/tags/*`.
    Tag,
    /// Anything else (`refs/notes/*`, `refs/changes/*`...).
    Other,
}

impl RefKind {
    /// The kind of `refname`.
    pub fn of(refname: &str) -> RefKind {
        if refname.starts_with("refs/heads/") {
            RefKind::Branch
        } else if refname.starts_with("refs/tags/") {
            RefKind::Tag
        } else {
            RefKind::Other
        }
    }
}

/// An author or committer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Name.
    pub name: String,
    /// Email.
    pub email: String,
}

/// One commit as the payload lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// Commit id.
    pub id: String,
    /// Tree id.
    pub tree_id: String,
    /// Full message, without the trailing newline.
    pub message: String,
    /// Author date, RFC 3339 with offset.
    pub timestamp: String,
    /// Author.
    pub author: Person,
    /// Committer.
    pub committer: Person,
    /// Paths added (merges: compared to the first parent).
    pub added: Vec<String>,
    /// Paths removed.
    pub removed: Vec<String>,
    /// Paths modified (content or type).
    pub modified: Vec<String>,
    /// Not reachable from any other ref of the repository.
    pub distinct: bool,
}

/// The git facts of one ref update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefData {
    /// The update itself.
    pub update: RefUpdate,
    /// Branch, tag or other.
    pub kind: RefKind,
    /// The ref did not exist before.
    pub created: bool,
    /// The ref was deleted.
    pub deleted: bool,
    /// History was rewritten (see the module doc).
    pub forced: bool,
    /// For a created ref whose target is the tip of another branch: that branch.
    pub base_ref: Option<String>,
    /// Listed commits, oldest first, at most `max_commits`.
    pub commits: Vec<CommitInfo>,
    /// True number of commits in the range.
    pub total_commits: u64,
    /// The commit `after` points to (peeled); `None` when deleted or not a commit.
    pub head_commit: Option<CommitInfo>,
}

/// Another ref of the repository and the commit it peels to.
#[derive(Debug, Clone)]
struct OtherRef {
    name: String,
    commit: String,
}

/// Reads every update of a push (in order). `max_commits` caps each ref's list.
pub async fn read_refs(
    repo: &GitRepo,
    updates: &[RefUpdate],
    max_commits: u32,
) -> Result<Vec<RefData>, GitError> {
    let refs = list_refs(repo).await?;
    let mut out = Vec::with_capacity(updates.len());
    for u in updates {
        out.push(read_with(repo, u, &refs, max_commits).await?);
    }
    Ok(out)
}

/// Reads one update.
pub async fn read_ref(
    repo: &GitRepo,
    update: &RefUpdate,
    max_commits: u32,
) -> Result<RefData, GitError> {
    let refs = list_refs(repo).await?;
    read_with(repo, update, &refs, max_commits).await
}

async fn list_refs(repo: &GitRepo) -> Result<Vec<OtherRef>, GitError> {
    let out = repo
        .run(
            &[
                "for-each-ref",
                "--format=%(refname)%00%(objecttype)%00%(objectname)%00%(*objecttype)%00%(*objectname)",
            ],
            None,
        )
        .await?;
    let text = String::from_utf8_lossy(&out);
    let mut refs = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\0').collect();
        let [name, ty, id, peeled_ty, peeled_id] = f[..] else {
            continue;
        };
        let commit = match (ty, peeled_ty) {
            ("commit", _) => id,
            ("tag", "commit") => peeled_id,
            // Refs to trees, blobs or nested tags cannot hide commits we list.
            _ => continue,
        };
        refs.push(OtherRef {
            name: name.to_string(),
            commit: commit.to_string(),
        });
    }
    Ok(refs)
}

async fn read_with(
    repo: &GitRepo,
    update: &RefUpdate,
    refs: &[OtherRef],
    max_commits: u32,
) -> Result<RefData, GitError> {
    let kind = RefKind::of(&update.refname);
    let created = update.is_created();
    let deleted = update.is_deleted();
    let mut data = RefData {
        update: update.clone(),
        kind,
        created,
        deleted,
        forced: false,
        base_ref: None,
        commits: Vec::new(),
        total_commits: 0,
        head_commit: None,
    };
    if deleted {
        return Ok(data);
    }
    let others: Vec<&OtherRef> = refs.iter().filter(|r| r.name != update.refname).collect();
    let head = match kind {
        RefKind::Branch => update.after.clone(),
        RefKind::Tag | RefKind::Other => match peel_commit(repo, &update.after).await? {
            Some(c) => c,
            None => return Ok(data),
        },
    };
    if created {
        data.base_ref = others
            .iter()
            .find(|r| r.name.starts_with("refs/heads/") && r.commit == head)
            .map(|r| r.name.clone());
    }
    if kind != RefKind::Branch {
        data.forced = !created;
        data.head_commit = log(repo, &["-1", &head], None).await?.into_iter().next();
        return Ok(data);
    }

    let not_others: String = others.iter().map(|r| format!("^{}\n", r.commit)).collect();
    let max = format!("--max-count={max_commits}");
    let exclude_before = format!("^{}", update.before);
    if created && others.iter().any(|r| r.commit == head) {
        // The tip of another ref (a branch made from one): everything it reaches is
        // reachable from that ref, so it brought no commits. Saves a `git log`.
    } else if created {
        // New commits are exactly those not on any other ref: all distinct.
        let input = Some(not_others.as_bytes());
        data.commits = log(repo, &[&max, "--reverse", &head, "--stdin"], input).await?;
        data.total_commits = match uncapped(&data.commits, max_commits) {
            Some(n) => n,
            None => count(repo, &[&head, "--stdin"], input).await?,
        };
    } else {
        data.forced = !is_ancestor(repo, &update.before, &head).await?;
        data.commits = log(repo, &[&max, "--reverse", &head, &exclude_before], None).await?;
        data.total_commits = match uncapped(&data.commits, max_commits) {
            Some(n) => n,
            None => count(repo, &[&head, &exclude_before], None).await?,
        };
        let new_ids = repo
            .run(
                &["rev-list", &head, &exclude_before, "--stdin"],
                Some(not_others.as_bytes()),
            )
            .await?;
        let new_ids = String::from_utf8_lossy(&new_ids);
        let new_ids: std::collections::HashSet<&str> = new_ids.lines().collect();
        for c in &mut data.commits {
            c.distinct = new_ids.contains(c.id.as_str());
        }
    }
    data.head_commit = match data.commits.iter().find(|c| c.id == head) {
        Some(c) => Some(c.clone()),
        None => {
            let mut c = log(repo, &["-1", &head], None).await?.into_iter().next();
            if let Some(c) = c.as_mut() {
                c.distinct = false;
            }
            c
        }
    };
    Ok(data)
}

/// The commit `id` peels to, or `None` for a tree or blob.
async fn peel_commit(repo: &GitRepo, id: &str) -> Result<Option<String>, GitError> {
    let spec = format!("{id}^{{commit}}");
    let out = repo
        .run_status(&["rev-parse", "--verify", "--quiet", &spec], None, true)
        .await?;
    if !out.success {
        // Exit 1 with --quiet: either missing or not peelable; tell them apart.
        let exists = repo.run_status(&["cat-file", "-e", id], None, true).await?;
        if !exists.success {
            return Err(GitError::NotFound(format!("object {id} does not exist")));
        }
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// The true count when the list was not cut by the cap (saves a `git rev-list
/// --count` process for the common small push).
fn uncapped(commits: &[CommitInfo], max_commits: u32) -> Option<u64> {
    (commits.len() < max_commits as usize).then_some(commits.len() as u64)
}

/// `true` when `a` is an ancestor of (or equal to) `b`.
pub async fn is_ancestor(repo: &GitRepo, a: &str, b: &str) -> Result<bool, GitError> {
    let out = repo
        .run_status(&["merge-base", "--is-ancestor", a, b], None, true)
        .await?;
    Ok(out.success)
}

async fn count(repo: &GitRepo, revs: &[&str], stdin: Option<&[u8]>) -> Result<u64, GitError> {
    let mut args = vec!["rev-list", "--count"];
    args.extend_from_slice(revs);
    let out = repo.run(&args, stdin).await?;
    String::from_utf8_lossy(&out)
        .trim()
        .parse()
        .map_err(|e| GitError::Failed {
            command: "rev-list".into(),
            message: format!("unexpected --count output: {e}"),
        })
}

/// Marker opening each commit record in `git log` output (a byte that cannot
/// start a NUL-separated header token otherwise).
const RECORD: char = '\u{1}';
const LOG_FORMAT: &str =
    "--format=%x01%H%x00%T%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B%x00";

/// Lists commits with their changed paths in one `git log` (merges compared to
/// their first parent, renames as add + remove). `distinct` defaults to `true`.
async fn log(
    repo: &GitRepo,
    revs: &[&str],
    stdin: Option<&[u8]>,
) -> Result<Vec<CommitInfo>, GitError> {
    let mut args = vec![
        "log",
        "-z",
        "--no-color",
        "--no-renames",
        "--no-show-signature",
        "--diff-merges=first-parent",
        "--name-status",
        LOG_FORMAT,
    ];
    args.extend_from_slice(revs);
    let out = repo.run(&args, stdin).await?;
    parse_log(&String::from_utf8_lossy(&out)).map_err(|message| GitError::Failed {
        command: "log".into(),
        message,
    })
}

/// Parses the output of [`log`]: NUL-separated tokens; a token starting with
/// [`RECORD`] opens a commit whose 8 other header fields follow, then
/// `<status>\0<path>\0` pairs (the status may carry a leading newline).
fn parse_log(text: &str) -> Result<Vec<CommitInfo>, String> {
    let mut commits: Vec<CommitInfo> = Vec::new();
    let mut tokens = text.split('\0');
    while let Some(tok) = tokens.next() {
        let tok = tok.trim_start_matches('\n');
        if tok.is_empty() {
            continue;
        }
        if let Some(id) = tok.strip_prefix(RECORD) {
            let mut field = || {
                tokens
                    .next()
                    .ok_or_else(|| format!("truncated record for {id}"))
            };
            let tree_id = field()?.to_string();
            let (an, ae, ad) = (
                field()?.to_string(),
                field()?.to_string(),
                field()?.to_string(),
            );
            let (cn, ce) = (field()?.to_string(), field()?.to_string());
            let _committed = field()?;
            let message = field()?.trim_end_matches('\n').to_string();
            commits.push(CommitInfo {
                id: id.to_string(),
                tree_id,
                message,
                timestamp: ad,
                author: Person {
                    name: an,
                    email: ae,
                },
                committer: Person {
                    name: cn,
                    email: ce,
                },
                added: Vec::new(),
                removed: Vec::new(),
                modified: Vec::new(),
                distinct: true,
            });
            continue;
        }
        let path = tokens
            .next()
            .ok_or_else(|| format!("status {tok:?} without a path"))?
            .to_string();
        let Some(c) = commits.last_mut() else {
            return Err(format!("status {tok:?} before any commit"));
        };
        match tok.chars().next() {
            Some('A') => c.added.push(path),
            Some('D') => c.removed.push(path),
            Some('M') | Some('T') => c.modified.push(path),
            _ => return Err(format!("unexpected status {tok:?}")),
        }
    }
    Ok(commits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_records_with_paths_and_empty_messages() {
        let text = "\u{1}aaa\0t1\0A\0a@x\x002020-01-01T00:00:00Z\0C\0c@x\x002020-01-01T00:00:00Z\0merge\n\0\0\nA\0b\0M\0c d\0\
                    \u{1}bbb\0t2\0A\0a@x\x002020-01-01T00:00:00Z\0C\0c@x\x002020-01-01T00:00:00Z\0\0\0\
                    \u{1}ccc\0t3\0A\0a@x\x002020-01-01T00:00:00Z\0C\0c@x\x002020-01-01T00:00:00Z\0x\n\0\0\nD\0old\0T\0link\0";
        let c = parse_log(text).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].id.as_str(), c[0].message.as_str()), ("aaa", "merge"));
        assert_eq!(c[0].added, vec!["b"]);
        assert_eq!(c[0].modified, vec!["c d"]);
        assert_eq!(c[1].message, "");
        assert!(c[1].added.is_empty());
        assert_eq!(c[2].removed, vec!["old"]);
        assert_eq!(c[2].modified, vec!["link"]);
    }
}
