//! What commands print: the tables (tab-separated lines) and `--json` documents
//! of the listing commands, and the one-line reports of the others that have
//! more than a sentence to say.
//!
//! Owns the shape of stdout that scripts read; takes what the library returned
//! and never fetches anything itself. Warnings and errors go to stderr from the
//! commands, not from here.

use std::collections::HashMap;

use crate::dlq::DeadLetter;
use crate::guard::pause::PausedKind;
use crate::outbox::replay::ReplayReport;
use crate::outbox::status::Status;
use crate::webhook::storage::AttemptRow;
use crate::webhook::subscription::Subscription;

/// `dlq list`: one line per dead letter (id, attempt, class and error), or JSON.
pub(super) fn dead_letters(letters: &[DeadLetter], kind: &str, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(letters)?);
    } else if letters.is_empty() {
        println!("no dead letters for {kind}");
    } else {
        for d in letters {
            println!(
                "{}  attempt {}  {}: {}",
                d.message_id.as_deref().unwrap_or("(no message id)"),
                d.attempt
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                d.error_class.as_deref().unwrap_or("-"),
                d.error.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

/// `webhook list`: every subscription with its pushes matched in the last day
/// (`matched`, by subscription id), as tab-separated lines or JSON; URLs
/// redacted either way, secrets never shown.
pub(super) fn subscriptions(subs: &[Subscription], matched: &HashMap<i64, i64>, json: bool) {
    if json {
        let rows: Vec<serde_json::Value> = subs
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                if let Some(m) = v.as_object_mut() {
                    m.insert("url".into(), crate::config::redact_url(&s.url).into());
                    let n = matched.get(&s.id).copied().unwrap_or(0);
                    m.insert("pushes_24h".into(), n.into());
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        for s in subs {
            subscription_line(s, matched.get(&s.id).copied().unwrap_or(0));
        }
    }
}

/// One line of `webhook list`'s table.
fn subscription_line(s: &Subscription, pushes_24h: i64) {
    let rotating = match s.previous_secret_expires_at {
        Some(t) if t > chrono::Utc::now() && s.previous_secret.is_some() => {
            format!("\tprevious secret valid until {}", t.to_rfc3339())
        }
        _ => String::new(),
    };
    println!(
        "{}\t{}\t{}\t{}\t{}\tevents={}\tstyle={}\tsecret={}\tfailures={}\tpushes_24h={}{}{}",
        s.id,
        if s.active { "active" } else { "disabled" },
        s.repository_pattern,
        crate::config::redact_url(&s.url),
        s.content_type,
        s.events.join(","),
        s.style.as_str(),
        if s.secret.is_some() { "yes" } else { "no" },
        s.consecutive_failures,
        pushes_24h,
        s.disabled_reason
            .as_deref()
            .map(|r| format!("\tdisabled: {r}"))
            .unwrap_or_default(),
        rotating
    );
}

/// `webhook deliveries`: recorded attempts as tab-separated lines or JSON.
pub(super) fn attempts(rows: &[AttemptRow], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(rows).unwrap_or_default());
    } else {
        for r in rows {
            println!(
                "{}\t{}\tsub={}\t{}\tattempt={}\t{}\tstatus={}\t{}ms\t{}",
                r.created_at.to_rfc3339(),
                r.delivery_id,
                r.subscription_id,
                r.event_type.as_deref().unwrap_or("-"),
                r.attempt,
                r.outcome,
                r.status.map_or("-".to_string(), |s| s.to_string()),
                r.duration_ms,
                r.error.as_deref().unwrap_or("")
            );
        }
    }
}

/// `pause --list`: one line per paused kind (when, by whom, why).
pub(super) fn paused_kinds(rows: Vec<PausedKind>) {
    if rows.is_empty() {
        println!("no job kind is paused");
    }
    for r in rows {
        println!(
            "{}\tpaused {}{}{}",
            r.kind,
            r.paused_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.paused_by.map(|b| format!(" by {b}")).unwrap_or_default(),
            r.reason.map(|x| format!(": {x}")).unwrap_or_default(),
        );
    }
}

/// `outbox status`: the rendered report, or JSON.
pub(super) fn outbox_status(status: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

/// `outbox replay`: the count and a sample (dry run), or what was published in
/// `secs`; `jobs` says whether job rows were included.
pub(super) fn replay_report(report: &ReplayReport, dry_run: bool, jobs: &str, secs: f64) {
    if dry_run {
        println!(
            "{} events match (dry run, nothing published; {jobs})",
            report.selected
        );
        for r in &report.sample {
            println!(
                "  id {} {} {} correlation {} created {}",
                r.id,
                r.event_type,
                r.message_id,
                r.correlation_id.as_deref().unwrap_or("-"),
                r.created_at.to_rfc3339()
            );
        }
    } else {
        println!(
            "replayed {} of {} events in {secs:.1}s ({:.0}/s; {jobs})",
            report.published,
            report.selected,
            report.published as f64 / secs.max(0.001)
        );
    }
}
