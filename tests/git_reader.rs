//! The git reader (`push::git`, `push::classify`) and the payload builder on real
//! repositories: a bare repository pushed to from a clone, as in production.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hookfleet::config::{Config, PushConfig};
use hookfleet::push::classify::{RefData, RefKind, read_ref, read_refs};
use std::sync::Arc;

use hookfleet::push::git::{GitError, GitRepo, RepoCache};
use hookfleet::push::payload::{events_for_push, refs_to_read};
use hookfleet::push_job::PushJob;
use hookfleet::push_job::update::RefUpdate;

const ZERO: &str = "0000000000000000000000000000000000000000";

/// A bare repository and a working clone of it. Reads go through a repository
/// kept open across the fixture's pushes (as the push handler reads), so every
/// test here also checks that a kept repository sees what was pushed since.
struct Fixture {
    _dir: tempfile::TempDir,
    bare: PathBuf,
    work: PathBuf,
    repos: Arc<RepoCache>,
}

fn git_in(dir: &Path, args: &[&str]) -> String {
    git_env(dir, args, &[])
}

/// `git_in` with extra environment (set after the fixed dates, so it wins).
fn git_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Ann Author",
            "-c",
            "user.email=ann@example.com",
        ])
        .args([
            "-c",
            "advice.detachedHead=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Ann Author")
        .env("GIT_AUTHOR_EMAIL", "ann@example.com")
        .env("GIT_AUTHOR_DATE", "2024-05-01T12:00:00+02:00")
        .env("GIT_COMMITTER_NAME", "Carl Committer")
        .env("GIT_COMMITTER_EMAIL", "carl@example.com")
        .env("GIT_COMMITTER_DATE", "2024-05-01T12:00:00+02:00")
        .envs(env.iter().copied())
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Fixture {
    fn new() -> Fixture {
        Self::with_format("sha1")
    }

    fn with_format(format: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("repo.git");
        let work = dir.path().join("work");
        let fmt = format!("--object-format={format}");
        git_in(dir.path(), &["init", "-q", "--bare", &fmt, "repo.git"]);
        git_in(dir.path(), &["init", "-q", &fmt, "work"]);
        git_in(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Fixture {
            _dir: dir,
            bare,
            work,
            repos: Arc::new(RepoCache::new(4)),
        }
    }

    fn git(&self, args: &[&str]) -> String {
        git_in(&self.work, args)
    }

    /// Writes (or with `None` removes) files and commits; returns the commit id.
    fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (path, content) in files {
            let p = self.work.join(path);
            match content {
                Some(c) => std::fs::write(&p, c).unwrap(),
                None => std::fs::remove_file(&p).unwrap(),
            }
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// The bare repository's value of `refname` (or the zero id).
    fn remote_ref(&self, refname: &str) -> String {
        let out = Command::new("git")
            .arg(format!("--git-dir={}", self.bare.display()))
            .args(["rev-parse", "--verify", "--quiet", refname])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if s.is_empty() { self.zero() } else { s }
    }

    fn zero(&self) -> String {
        "0".repeat(self.git(&["rev-parse", "HEAD"]).len())
    }

    /// Pushes `refspec` and returns the update as the hook would see it.
    fn push(&self, refspec: &str, refname: &str) -> RefUpdate {
        let before = self.remote_ref(refname);
        self.git(&["push", "-q", "origin", refspec]);
        RefUpdate {
            refname: refname.into(),
            before,
            after: self.remote_ref(refname),
        }
    }

    fn repo(&self) -> GitRepo {
        GitRepo::new(&push_config(), &self.bare).cached(self.repos.clone())
    }
}

fn push_config() -> PushConfig {
    Config::load_from(None, Vec::<(String, String)>::new())
        .unwrap()
        .push
}

async fn read(f: &Fixture, u: &RefUpdate) -> RefData {
    read_ref(&f.repo(), u, 2048).await.unwrap()
}

fn ids(d: &RefData) -> Vec<String> {
    d.commits.iter().map(|c| c.id.clone()).collect()
}

#[tokio::test]
async fn branch_create_update_force_push_and_delete() {
    let f = Fixture::new();
    let c1 = f.commit(&[("a.txt", Some("one\n"))], "first\n\nwith a body");
    let u = f.push("main", "refs/heads/main");
    assert_eq!(u.before, ZERO);
    let d = read(&f, &u).await;
    assert_eq!(d.kind, RefKind::Branch);
    assert!(d.created && !d.deleted && !d.forced);
    assert_eq!(ids(&d), vec![c1.clone()]);
    assert_eq!(d.total_commits, 1);
    let c = &d.commits[0];
    assert!(c.distinct);
    assert_eq!(c.message, "first\n\nwith a body");
    assert_eq!(c.added, vec!["a.txt"]);
    assert_eq!(c.author.name, "Ann Author");
    assert_eq!(c.author.email, "ann@example.com");
    assert_eq!(c.committer.name, "Carl Committer");
    assert_eq!(c.timestamp, "2024-05-01T12:00:00+02:00");
    assert_eq!(c.tree_id, f.git(&["rev-parse", "HEAD^{tree}"]));
    assert_eq!(
        d.head_commit.as_ref().map(|c| c.id.as_str()),
        Some(c1.as_str())
    );

    // A fast-forward of two commits: oldest first, paths per commit.
    let c2 = f.commit(
        &[("a.txt", Some("two\n")), ("b.txt", Some("b\n"))],
        "second",
    );
    let c3 = f.commit(&[("b.txt", None)], "third");
    let u = f.push("main", "refs/heads/main");
    let d = read(&f, &u).await;
    assert!(!d.created && !d.deleted && !d.forced);
    assert_eq!(ids(&d), vec![c2.clone(), c3.clone()]);
    assert_eq!(d.total_commits, 2);
    assert_eq!(d.commits[0].added, vec!["b.txt"]);
    assert_eq!(d.commits[0].modified, vec!["a.txt"]);
    assert_eq!(d.commits[1].removed, vec!["b.txt"]);
    assert!(d.commits.iter().all(|c| c.distinct));
    assert_eq!(d.head_commit.unwrap().id, c3);

    // Rewrite history and force-push.
    f.git(&["reset", "-q", "--hard", &c1]);
    let c4 = f.commit(&[("c.txt", Some("c\n"))], "rewritten");
    let u = f.push("+main", "refs/heads/main");
    assert_eq!(u.before, c3);
    let d = read(&f, &u).await;
    assert!(d.forced && !d.created && !d.deleted);
    assert_eq!(ids(&d), vec![c4.clone()]);

    // Delete a branch.
    f.push("main:refs/heads/gone", "refs/heads/gone");
    let u = f.push(":refs/heads/gone", "refs/heads/gone");
    assert_eq!(u.after, ZERO);
    let d = read(&f, &u).await;
    assert!(d.deleted && !d.created && !d.forced);
    assert!(d.commits.is_empty() && d.head_commit.is_none());
    assert_eq!(d.total_commits, 0);
}

#[tokio::test]
async fn tags_created_and_deleted() {
    let f = Fixture::new();
    let c1 = f.commit(&[("a", Some("a"))], "one");
    f.push("main", "refs/heads/main");
    f.git(&["tag", "v1"]);
    f.git(&["tag", "-a", "-m", "release 2", "v2"]);
    let light = f.push("v1", "refs/tags/v1");
    let annotated = f.push("v2", "refs/tags/v2");
    assert_ne!(
        annotated.after, c1,
        "an annotated tag points to a tag object"
    );
    for u in [&light, &annotated] {
        let d = read(&f, u).await;
        assert_eq!(d.kind, RefKind::Tag);
        assert!(d.created && !d.deleted && !d.forced);
        assert!(d.commits.is_empty());
        assert_eq!(
            d.head_commit.as_ref().unwrap().id,
            c1,
            "peeled to the commit"
        );
        assert_eq!(d.base_ref.as_deref(), Some("refs/heads/main"));
    }
    let u = f.push(":refs/tags/v1", "refs/tags/v1");
    let d = read(&f, &u).await;
    assert_eq!(d.kind, RefKind::Tag);
    assert!(d.deleted && d.head_commit.is_none());
}

#[tokio::test]
async fn merge_paths_are_against_the_first_parent_and_known_commits_are_not_distinct() {
    let f = Fixture::new();
    f.commit(&[("base", Some("0"))], "base");
    f.push("main", "refs/heads/main");
    f.git(&["checkout", "-q", "-b", "side"]);
    let s1 = f.commit(&[("side.txt", Some("s"))], "side work");
    f.push("side", "refs/heads/side");
    f.git(&["checkout", "-q", "main"]);
    let m1 = f.commit(&[("main.txt", Some("m"))], "main work");
    f.git(&["merge", "-q", "--no-ff", "-m", "merge side", "side"]);
    let merge = f.git(&["rev-parse", "HEAD"]);
    let u = f.push("main", "refs/heads/main");
    let d = read(&f, &u).await;
    let mut got = ids(&d);
    got.sort();
    let mut want = vec![s1.clone(), m1.clone(), merge.clone()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(d.total_commits, 3);
    let by_id = |id: &str| d.commits.iter().find(|c| c.id == id).unwrap();
    assert_eq!(
        by_id(&merge).added,
        vec!["side.txt"],
        "merge vs first parent"
    );
    assert!(by_id(&merge).modified.is_empty() && by_id(&merge).removed.is_empty());
    assert!(!by_id(&s1).distinct, "already on refs/heads/side");
    assert!(by_id(&m1).distinct && by_id(&merge).distinct);
    assert_eq!(
        d.commits.last().unwrap().id,
        merge,
        "oldest first, head last"
    );
}

#[tokio::test]
async fn created_branch_lists_only_commits_new_to_the_repository() {
    let f = Fixture::new();
    f.commit(&[("a", Some("a"))], "one");
    let c2 = f.commit(&[("a", Some("b"))], "two");
    f.push("main", "refs/heads/main");
    // A copy of main: nothing new, based on main.
    let u = f.push("main:refs/heads/copy", "refs/heads/copy");
    let d = read(&f, &u).await;
    assert!(d.created);
    assert!(d.commits.is_empty());
    assert_eq!(d.total_commits, 0);
    assert_eq!(d.base_ref.as_deref(), Some("refs/heads/main"));
    let head = d.head_commit.unwrap();
    assert_eq!(head.id, c2);
    assert!(!head.distinct);
    // A new branch with one commit on top of main (HEAD of the bare repository
    // points at main, which must not hide anything either).
    f.git(&["checkout", "-q", "-b", "topic"]);
    let t1 = f.commit(&[("t", Some("t"))], "topic");
    let u = f.push("topic", "refs/heads/topic");
    let d = read(&f, &u).await;
    assert_eq!(ids(&d), vec![t1]);
    assert_eq!(d.base_ref, None);
    // The first push of a branch the bare HEAD points at lists its commits.
    let f2 = Fixture::new();
    let a = f2.commit(&[("x", Some("x"))], "x");
    let u = f2.push("main", "refs/heads/main");
    assert_eq!(ids(&read(&f2, &u).await), vec![a]);

    // A ref to a tree is skipped; a commit reachable only through an annotated
    // tag is not new.
    let tree = f.git(&["rev-parse", "main^{tree}"]);
    git_in(&f.bare, &["update-ref", "refs/tags/a-tree", &tree]);
    f.git(&["checkout", "-q", "-b", "side", "main"]);
    f.commit(&[("s", Some("1"))], "side one");
    f.git(&["tag", "-a", "-m", "annotated", "v-side"]);
    f.push("v-side", "refs/tags/v-side");
    let s2 = f.commit(&[("s", Some("2"))], "side two");
    let u = f.push("side", "refs/heads/side");
    assert_eq!(ids(&read(&f, &u).await), vec![s2]);
}

#[tokio::test]
async fn commit_list_is_capped_but_the_count_is_true() {
    let f = Fixture::new();
    let mut all = Vec::new();
    for i in 0..5 {
        all.push(f.commit(&[("n", Some(&i.to_string()))], &format!("c{i}")));
    }
    let u = f.push("main", "refs/heads/main");
    let d = read_ref(&f.repo(), &u, 2).await.unwrap();
    assert_eq!(d.total_commits, 5);
    assert_eq!(ids(&d), all[3..].to_vec(), "the newest two, oldest first");
    assert_eq!(d.head_commit.unwrap().id, all[4]);
}

#[tokio::test]
async fn missing_repository_or_object_is_not_found_and_a_slow_read_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let u = RefUpdate {
        refname: "refs/heads/main".into(),
        before: ZERO.into(),
        after: "1".repeat(40),
    };
    let repo = GitRepo::new(&push_config(), dir.path().join("nope.git"));
    let err = read_ref(&repo, &u, 10).await.unwrap_err();
    assert!(matches!(err, GitError::NotFound(_)), "{err:?}");
    assert!(err.is_permanent());
    // A directory that is not a repository.
    let repo = GitRepo::new(&push_config(), dir.path());
    let err = read_ref(&repo, &u, 10).await.unwrap_err();
    assert!(matches!(err, GitError::NotFound(_)), "{err:?}");
    // A repository without that object.
    let f = Fixture::new();
    f.commit(&[("a", Some("a"))], "one");
    f.push("main", "refs/heads/main");
    let err = read_ref(&f.repo(), &u, 10).await.unwrap_err();
    assert!(matches!(err, GitError::NotFound(_)), "{err:?}");
    let tag = RefUpdate {
        refname: "refs/tags/x".into(),
        ..u.clone()
    };
    let err = read_ref(&f.repo(), &tag, 10).await.unwrap_err();
    assert!(matches!(err, GitError::NotFound(_)), "{err:?}");

    // A read that outlasts push.git_timeout is a transient timeout. The deadline
    // is already over when the read starts: what is asserted is that the reader
    // gives up and says so, not how fast the machine is.
    let mut cfg = push_config();
    cfg.git_timeout = Duration::from_nanos(1);
    let ok = RefUpdate {
        refname: "refs/heads/main".into(),
        before: ZERO.into(),
        after: f.remote_ref("refs/heads/main"),
    };
    let err = read_ref(&GitRepo::new(&cfg, &f.bare), &ok, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Timeout { .. }), "{err:?}");
    assert!(!err.is_permanent());
}

#[tokio::test]
async fn sha256_repositories_work() {
    let f = Fixture::with_format("sha256");
    let c1 = f.commit(&[("a", Some("a"))], "one");
    assert_eq!(c1.len(), 64);
    let u = f.push("main", "refs/heads/main");
    assert_eq!(u.before.len(), 64);
    u.validate().unwrap();
    let d = read(&f, &u).await;
    assert_eq!(ids(&d), vec![c1]);
}

#[tokio::test]
async fn payloads_follow_github_push_events() {
    let f = Fixture::new();
    f.commit(&[("a", Some("a"))], "one");
    let main = f.push("main", "refs/heads/main");
    let c2 = f.commit(&[("a", Some("b"))], "two");
    let c3 = f.commit(&[("b", Some("b"))], "three");
    let update = f.push("main", "refs/heads/main");
    f.git(&["reset", "-q", "--hard", "HEAD~1"]);
    let forced = f.push("+main:refs/heads/other", "refs/heads/other");
    f.git(&["tag", "v1"]);
    let tag = f.push("v1", "refs/tags/v1");
    let del_tag = f.push(":refs/tags/v1", "refs/tags/v1");
    let job = PushJob {
        push_id: uuid::Uuid::now_v7(),
        repository: "team/app.git".into(),
        path: None,
        pusher: Some("alice".into()),
        push_options: vec![],
        pushed_at: chrono::Utc::now(),
        refs_omitted: 0,
        updates: vec![update.clone(), forced, tag, del_tag, main],
    };
    let mut cfg = push_config();
    cfg.compare_base_url = "https://git.test/".into();
    cfg.max_refs = 4;
    let to_read = refs_to_read(&job, &cfg);
    assert_eq!(to_read.len(), 4);
    let data = read_refs(&f.repo(), to_read, cfg.max_commits)
        .await
        .unwrap();
    let events = events_for_push(&job, &data, &Default::default(), &cfg);
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        vec![
            "git.push",
            "git.push",
            "git.branch.created",
            "git.push",
            "git.tag.created",
            "git.push",
            "git.tag.deleted",
            "git.push.bulk"
        ]
    );
    let p = &events[0].1;
    assert_eq!(p["ref"], "refs/heads/main");
    assert_eq!(p["before"], update.before);
    assert_eq!(p["after"], c3);
    assert_eq!(p["created"], false);
    assert_eq!(p["deleted"], false);
    assert_eq!(p["forced"], false);
    assert_eq!(p["base_ref"], serde_json::Value::Null);
    assert_eq!(
        p["compare"],
        format!(
            "https://git.test/team/app/compare/{}...{}",
            &update.before[..12],
            &c3[..12]
        )
    );
    assert_eq!(p["total_commits_count"], 2);
    assert_eq!(p["commits"][0]["id"], c2);
    // c2 is also on refs/heads/other (pushed in the same push): not distinct.
    assert_eq!(p["commits"][0]["distinct"], false);
    assert_eq!(p["commits"][1]["distinct"], true);
    assert_eq!(p["commits"][0]["modified"][0], "a");
    assert_eq!(p["commits"][1]["added"][0], "b");
    assert_eq!(
        p["commits"][1]["url"],
        format!("https://git.test/team/app/commit/{c3}")
    );
    assert_eq!(p["commits"][1]["author"]["name"], "Ann Author");
    assert_eq!(p["commits"][1]["committer"]["email"], "carl@example.com");
    assert_eq!(p["head_commit"]["id"], c3);
    assert_eq!(p["pusher"]["name"], "alice");
    assert_eq!(p["sender"]["login"], "alice");
    assert_eq!(p["repository"]["name"], "app");
    assert_eq!(p["repository"]["full_name"], "team/app");
    assert_eq!(p["repository"]["url"], "https://git.test/team/app");
    assert_eq!(p["push_id"], job.push_id.to_string());
    // The created branch at an existing commit.
    let other = &events[1].1;
    assert_eq!(other["created"], true);
    assert_eq!(other["commits"].as_array().unwrap().len(), 0);
    assert_eq!(other["head_commit"]["id"], c2);
    assert_eq!(other["head_commit"]["distinct"], false);
    // The tag deletion.
    let del = &events[5].1;
    assert_eq!(del["deleted"], true);
    assert_eq!(del["head_commit"], serde_json::Value::Null);
    // The bulk event summarises the fifth ref.
    let bulk = &events[7].1;
    assert_eq!(bulk["refs_count"], 1);
    assert_eq!(bulk["total_refs_count"], 5);
    assert_eq!(bulk["refs"][0]["ref"], "refs/heads/main");
    assert_eq!(bulk["refs"][0]["created"], true);
}

/// Paths of one commit as `git log --name-status` lists them (merges against
/// the first parent, no rename detection).
fn git_paths(f: &Fixture, id: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let bare = format!("--git-dir={}", f.bare.display());
    let out = git_in(
        &f.work,
        &[
            &bare,
            "log",
            "-1",
            "-z",
            "--format=",
            "--name-status",
            "--no-renames",
            "--diff-merges=first-parent",
            id,
        ],
    );
    let (mut added, mut removed, mut modified) = (Vec::new(), Vec::new(), Vec::new());
    let mut tokens = out.split('\0').map(|t| t.trim_start_matches('\n'));
    while let Some(status) = tokens.next() {
        if status.is_empty() {
            continue;
        }
        let path = tokens.next().unwrap().to_string();
        match &status[..1] {
            "A" => added.push(path),
            "D" => removed.push(path),
            "M" | "T" => modified.push(path),
            other => panic!("unexpected status {other}"),
        }
    }
    (added, removed, modified)
}

/// Checks every listed commit of `d` against what the git CLI says of it.
fn assert_like_git(f: &Fixture, d: &RefData, git_range: &[&str], git_distinct: &[&str]) {
    let bare = format!("--git-dir={}", f.bare.display());
    let mut args = vec![bare.as_str(), "log", "--reverse", "--format=%H"];
    args.extend_from_slice(git_range);
    let want: Vec<String> = git_in(&f.work, &args).lines().map(str::to_string).collect();
    assert!(!want.is_empty(), "the scenario lists commits");
    assert_eq!(ids(d), want, "same commits in the same order as git log");
    assert_eq!(d.total_commits, want.len() as u64);
    let mut args = vec![bare.as_str(), "rev-list"];
    args.extend_from_slice(git_distinct);
    let distinct: Vec<String> = git_in(&f.work, &args).lines().map(str::to_string).collect();
    for c in &d.commits {
        assert_eq!(c.distinct, distinct.contains(&c.id), "distinct of {}", c.id);
        let (added, removed, modified) = git_paths(f, &c.id);
        assert_eq!(
            (&c.added, &c.removed, &c.modified),
            (&added, &removed, &modified),
            "paths of {} ({})",
            c.id,
            c.message
        );
        let show = |format: &str| git_in(&f.work, &[&bare, "log", "-1", format, &c.id]);
        assert_eq!(c.timestamp, show("--format=%aI"));
        assert_eq!(c.tree_id, show("--format=%T"));
        assert_eq!(c.message, show("--format=%B"));
        assert_eq!(c.committer.email, show("--format=%ce"));
    }
}

#[tokio::test]
async fn reads_agree_with_git_log_on_a_branchy_packed_history() {
    let f = Fixture::new();
    // Committer dates out of topological order, and ties, so the order of the
    // walk is tested, not just the set.
    let at = |files: &[(&str, Option<&str>)], message: &str, date: &str| {
        for (path, content) in files {
            let p = f.work.join(path);
            match content {
                Some(c) => {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, c).unwrap()
                }
                None => std::fs::remove_file(&p).unwrap(),
            }
        }
        f.git(&["add", "-A"]);
        git_env(
            &f.work,
            &["commit", "-q", "--allow-empty", "-m", message],
            &[("GIT_COMMITTER_DATE", date), ("GIT_AUTHOR_DATE", date)],
        );
        f.git(&["rev-parse", "HEAD"])
    };
    at(
        &[
            ("a.txt", Some("a")),
            ("dir/x", Some("x")),
            ("f", Some("file")),
        ],
        "root",
        "2024-01-01T00:00:00Z",
    );
    f.push("main", "refs/heads/main");
    f.git(&["checkout", "-q", "-b", "side"]);
    // A file replaced by a directory, a nested add, an executable bit.
    at(
        &[("f", None), ("f/g", Some("g"))],
        "file to dir",
        "2024-03-01T00:00:00Z",
    );
    at(
        &[("dir/sub/deep/y", Some("y"))],
        "nested",
        "2024-01-15T00:00:00-07:00",
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let p = f.work.join("f/g");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    at(&[], "mode", "2024-01-15T00:00:00-07:00");
    f.push("side", "refs/heads/side");
    f.git(&["tag", "-a", "-m", "annotated", "v1", "HEAD~1"]);
    f.push("v1", "refs/tags/v1");
    // Objects and refs packed, as after `git gc` on a server.
    let bare = format!("--git-dir={}", f.bare.display());
    git_in(&f.work, &[&bare, "gc", "-q"]);
    f.git(&["checkout", "-q", "main"]);
    let before = f.remote_ref("refs/heads/main");
    at(
        &[("a.txt", Some("a2")), ("dir/x", None)],
        "main 1",
        "2024-02-01T00:00:00+05:30",
    );
    #[cfg(unix)]
    {
        std::fs::remove_file(f.work.join("a.txt")).unwrap();
        std::os::unix::fs::symlink("dir/x", f.work.join("a.txt")).unwrap();
    }
    at(
        &[("b", Some("b"))],
        "file to symlink",
        "2024-02-01T00:00:00+05:30",
    );
    f.git(&["merge", "-q", "--no-ff", "-m", "merge side", "side"]);
    at(&[("b", Some("b2"))], "after merge", "2024-04-01T00:00:00Z");
    let u = f.push("main", "refs/heads/main");
    assert_eq!(u.before, before);
    let d = read(&f, &u).await;
    let range = format!("{}..{}", u.before, u.after);
    let not_main = format!("^{}", u.before);
    assert_like_git(
        &f,
        &d,
        &[&range],
        &[&u.after, &not_main, "^refs/heads/side", "^refs/tags/v1"],
    );
    assert!(!d.forced);

    // A created branch: the commits on no other ref.
    f.git(&["checkout", "-q", "-b", "topic", "side~1"]);
    at(&[("t1", Some("1"))], "topic 1", "2024-05-01T00:00:00Z");
    at(&[("t2", Some("2"))], "topic 2", "2024-05-01T00:00:00Z");
    let u = f.push("topic", "refs/heads/topic");
    let d = read(&f, &u).await;
    let not_others = ["^refs/heads/main", "^refs/heads/side", "^refs/tags/v1"];
    let mut range = vec![u.after.as_str()];
    range.extend_from_slice(&not_others);
    assert_like_git(&f, &d, &range, &range);
}

#[tokio::test]
async fn a_reftable_repository_is_refused_not_misread() {
    // gitoxide opens such a repository but sees none of its refs, which would make
    // every commit look new: the read must fail, permanently, and say why.
    let f = Fixture::new();
    f.commit(&[("a", Some("a"))], "one");
    let dir = tempfile::tempdir().unwrap();
    git_in(
        dir.path(),
        &["init", "-q", "--bare", "--ref-format=reftable", "rt.git"],
    );
    let bare = dir.path().join("rt.git");
    f.git(&["push", "-q", bare.to_str().unwrap(), "main"]);
    let head = f.git(&["rev-parse", "HEAD"]);
    let u = RefUpdate {
        refname: "refs/heads/main".into(),
        before: ZERO.into(),
        after: head,
    };
    let err = read_ref(&GitRepo::new(&push_config(), &bare), &u, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Unsupported(_)), "{err:?}");
    assert!(err.is_permanent());
    assert!(err.to_string().contains("reftable"), "{err}");
}

#[tokio::test]
async fn a_kept_open_repository_sees_new_packs_repacks_and_packed_refs() {
    let f = Fixture::new();
    // Every push arrives as a pack (as large pushes do), not as loose objects.
    git_in(&f.bare, &["config", "transfer.unpackLimit", "1"]);
    let c1 = f.commit(&[("a", Some("1"))], "one");
    let u = f.push("main", "refs/heads/main");
    assert_eq!(ids(&read(&f, &u).await), vec![c1]);

    // A new pack the kept repository has never seen.
    let c2 = f.commit(&[("a", Some("2"))], "two");
    let u = f.push("main", "refs/heads/main");
    assert_eq!(ids(&read(&f, &u).await), vec![c2.clone()]);

    // Everything repacked into one new pack (the old ones deleted) and every ref
    // packed: the next push is read from both, through the same open repository.
    git_in(&f.bare, &["repack", "-q", "-a", "-d"]);
    git_in(&f.bare, &["pack-refs", "--all"]);
    let c3 = f.commit(&[("b", Some("3"))], "three");
    let u = f.push("main:refs/heads/topic", "refs/heads/topic");
    let d = read(&f, &u).await;
    assert!(d.created);
    assert_eq!(
        ids(&d),
        vec![c3.clone()],
        "only the commit new to the repository"
    );
    assert_eq!(d.commits[0].added, vec!["b"]);
    // A packed ref moved by a push (now a loose ref again) and one deleted.
    let c4 = f.commit(&[("b", Some("4"))], "four");
    let u = f.push("main", "refs/heads/main");
    assert_eq!(ids(&read(&f, &u).await), vec![c3, c4]);
    let u = f.push(":refs/heads/topic", "refs/heads/topic");
    assert!(read(&f, &u).await.deleted);

    assert_eq!(
        f.repos.opened(),
        1,
        "every read used the repository kept open"
    );
    assert_eq!(f.repos.len(), 1);
}

#[tokio::test]
async fn a_kept_repository_serves_objects_it_read_before_from_its_cache() {
    let f = Fixture::new();
    f.commit(&[("a", Some("1"))], "one");
    f.push("main", "refs/heads/main");
    let parent_tree = f.git(&["rev-parse", "HEAD^{tree}"]);
    f.commit(&[("b", Some("2"))], "two");
    let u = f.push("main", "refs/heads/main");
    let first = read(&f, &u).await;
    assert_eq!(
        first.commits[0].added,
        vec!["b"],
        "diffed against the parent tree"
    );
    assert_eq!(f.repos.idle_handles(), 1, "the read gave its handle back");

    // The parent's tree leaves the disk (as a prune would): the kept handle still
    // has it, a repository opened afresh does not.
    let (dir, file) = parent_tree.split_at(2);
    std::fs::remove_file(f.bare.join("objects").join(dir).join(file)).unwrap();
    let again = read(&f, &u).await;
    assert_eq!(again.commits[0].added, vec!["b"]);
    assert_eq!(f.repos.opened(), 1);
    let fresh = GitRepo::new(&push_config(), &f.bare);
    assert!(read_ref(&fresh, &u, 2048).await.is_err());
}

#[tokio::test]
async fn a_kept_repository_that_is_deleted_replaced_or_reconfigured_is_not_read_stale() {
    let f = Fixture::new();
    f.commit(&[("a", Some("1"))], "one");
    let u = f.push("main", "refs/heads/main");
    read(&f, &u).await;
    assert_eq!(f.repos.opened(), 1);

    // Deleted: missing, permanently, although it is still open in the cache.
    std::fs::remove_dir_all(&f.bare).unwrap();
    let err = read_ref(&f.repo(), &u, 10).await.unwrap_err();
    assert!(matches!(err, GitError::NotFound(_)), "{err:?}");

    // Replaced by another repository at the same path, a SHA-256 one: a handle
    // kept from the SHA-1 repository would refuse its ids.
    let g = Fixture::with_format("sha256");
    let c2 = g.commit(&[("b", Some("2"))], "two");
    let u2 = g.push("main", "refs/heads/main");
    std::fs::rename(&g.bare, &f.bare).unwrap();
    let d = read_ref(&f.repo(), &u2, 10).await.unwrap();
    assert_eq!(ids(&d), vec![c2]);
    assert_eq!(f.repos.opened(), 2, "the replacement was opened afresh");

    // Reconfigured in place (refs migrated to reftable): opened again and refused.
    git_in(&f.bare, &["refs", "migrate", "--ref-format=reftable"]);
    let err = read_ref(&f.repo(), &u2, 10).await.unwrap_err();
    assert!(matches!(err, GitError::Unsupported(_)), "{err:?}");
}

#[tokio::test]
async fn the_least_recently_read_repository_is_closed_first() {
    let cache = Arc::new(RepoCache::new(2));
    let (a, b, c) = (Fixture::new(), Fixture::new(), Fixture::new());
    let mut updates = Vec::new();
    for f in [&a, &b, &c] {
        f.commit(&[("a", Some("1"))], "one");
        updates.push(f.push("main", "refs/heads/main"));
    }
    let read_in = |f: &Fixture, u: &RefUpdate| {
        let repo = GitRepo::new(&push_config(), &f.bare).cached(cache.clone());
        let u = u.clone();
        async move { read_ref(&repo, &u, 10).await.unwrap() }
    };
    read_in(&a, &updates[0]).await;
    read_in(&b, &updates[1]).await;
    read_in(&a, &updates[0]).await; // b is now the least recently read
    assert_eq!(cache.opened(), 2);
    read_in(&c, &updates[2]).await; // closes b
    assert_eq!(cache.len(), 2);
    read_in(&a, &updates[0]).await;
    assert_eq!(cache.opened(), 3, "a stayed open");
    read_in(&b, &updates[1]).await;
    assert_eq!(cache.opened(), 4, "b was closed and is opened again");
    assert_eq!(cache.len(), 2);

    // Capacity 0 keeps nothing open.
    let none = Arc::new(RepoCache::new(0));
    let repo = GitRepo::new(&push_config(), &a.bare).cached(none.clone());
    read_ref(&repo, &updates[0], 10).await.unwrap();
    read_ref(&repo, &updates[0], 10).await.unwrap();
    assert_eq!((none.opened(), none.len()), (2, 0));
}

/// A heavy read (here a commit of more files than `git::HEAVY_READ`) does not
/// keep its repository open: the giant push's caches and mapped packs go with
/// it, and the next push opens the repository afresh. Its paths are capped at
/// `push.max_paths_per_commit` and the rest counted.
#[tokio::test]
async fn a_heavy_read_closes_its_repository_and_caps_its_paths() {
    let f = Fixture::new();
    let cache = Arc::new(RepoCache::new(4));
    f.commit(&[("a", Some("1"))], "one");
    let small = f.push("main", "refs/heads/main");
    let many = f.work.join("many");
    std::fs::create_dir_all(&many).unwrap();
    let files = hookfleet::push::git::HEAVY_READ as usize + 2_000;
    for i in 0..files {
        std::fs::write(many.join(format!("f{i}")), "x").unwrap();
    }
    f.commit(&[], "many files");
    let heavy = f.push("main", "refs/heads/main");
    let repo = GitRepo::new(&push_config(), &f.bare).cached(cache.clone());

    read_ref(&repo, &small, 10).await.unwrap();
    assert_eq!(cache.len(), 1, "a small read keeps its repository open");
    let data = read_ref(&repo, &heavy, 10).await.unwrap();
    assert_eq!(cache.len(), 0, "a heavy read closes it");
    let c = &data.commits[0];
    let listed = c.added.len() + c.removed.len() + c.modified.len();
    assert_eq!(listed as u32, push_config().max_paths_per_commit);
    assert_eq!(c.paths_omitted as usize, files - listed);
    read_ref(&repo, &small, 10).await.unwrap();
    assert_eq!(cache.opened(), 2, "opened afresh after the heavy read");
}
