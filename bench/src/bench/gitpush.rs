//! The wall time of `git push` to a local bare repository, without a hook and
//! with hookfleet's post-receive hook installed (`hookfleet hook install`), which
//! publishes each push to the broker with a confirm before `git push` returns.

use std::path::Path;
use std::time::Instant;

use hookfleet::amqp::topology::Names;
use hookfleet::config::Config;
use hookfleet::push_job::PUSH_KIND;

use crate::support::{declare_topology, delete_topology, percentile};
use hookfleet_testkit::gitrepo::{TinyRepo, git_command, temp_dir, try_git};

fn timed_pushes(repo: &TinyRepo, n: usize, env: &[(String, String)]) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        std::fs::write(repo.work.join("c.txt"), format!("{i}\n"))?;
        try_git(&repo.work, &["commit", "-q", "-am", "bench"])?;
        let start = Instant::now();
        let o = git_command(&repo.work)
            .args(["push", "-q", "origin", "main"])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()?;
        out.push(start.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            o.status.success(),
            "git push failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(out)
}

/// Median ms without and with the hook, and how many pushes the hook published.
pub async fn git_push_times(exe: &Path, cfg: &Config, n: usize) -> anyhow::Result<(f64, f64, u32)> {
    let dir = temp_dir("hookfleet-bench-git")?;
    let result = async {
        let repo = TinyRepo::create(&dir)?;
        std::fs::write(repo.work.join("c.txt"), "start\n")?;
        try_git(&repo.work, &["add", "c.txt"])?;
        let mut without = timed_pushes(&repo, n, &[])?;

        let mut cfg = cfg.clone();
        cfg.amqp.prefix = format!("{}git", cfg.amqp.prefix);
        cfg.worker.kinds = vec![PUSH_KIND.into()];
        declare_topology(&cfg).await?;
        let o = std::process::Command::new(exe)
            .args(["hook", "install"])
            .arg(&repo.bare)
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "hook install failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let env = vec![
            (
                "HOOKFLEET_AMQP__PREFIX".to_string(),
                cfg.amqp.prefix.clone(),
            ),
            (
                "HOOKFLEET_HOOK__REPOSITORIES_ROOT".into(),
                repo.root.display().to_string(),
            ),
            (
                "HOOKFLEET_SPOOL__DIR".into(),
                dir.join("spool").display().to_string(),
            ),
        ];
        let mut with = timed_pushes(&repo, n, &env)?;
        let published =
            crate::support::queue_depth(&cfg, &Names::new(&cfg.amqp.prefix).queue(PUSH_KIND))
                .await?;
        delete_topology(&cfg).await?;
        anyhow::Ok((
            percentile(&mut without, 50.0),
            percentile(&mut with, 50.0),
            published,
        ))
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
