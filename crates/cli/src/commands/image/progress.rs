//! Pull and push progress: a bar per layer on a terminal, plain lines otherwise.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use vessel_oci::registry::{Event, Reporter};

pub fn reporter(quiet: bool, verb: &'static str) -> Reporter {
    if quiet {
        return Arc::new(|event| {
            if let Event::PlainHttp { registry } = event {
                eprintln!("warning: using plain HTTP for {registry}");
            }
        });
    }
    if std::io::stderr().is_terminal() {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
        let style = ProgressStyle::with_template(
            "{prefix:.bold} {msg:12} [{bar:30}] {bytes}/{total_bytes}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        return Arc::new(move |event| {
            let mut bars = bars.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Event::PlainHttp { registry } => {
                    let _ = multi.println(format!("warning: using plain HTTP for {registry}"));
                }
                Event::Resolved { layers, .. } => {
                    for (digest, size) in layers {
                        let bar = multi.add(ProgressBar::new(size));
                        bar.set_style(style.clone());
                        bar.set_prefix(digest.short().to_string());
                        bar.set_message("waiting");
                        bars.insert(digest.to_string(), bar);
                    }
                }
                Event::Progress { digest, done, .. } => {
                    if let Some(bar) = bars.get(&digest.to_string()) {
                        bar.set_message(verb);
                        bar.set_position(done);
                    }
                }
                Event::Exists { ref digest }
                | Event::Done { ref digest }
                | Event::Mounted { ref digest, .. } => {
                    let msg = match event {
                        Event::Exists { .. } => "exists",
                        Event::Mounted { .. } => "mounted",
                        _ => "done",
                    };
                    if let Some(bar) = bars.get(&digest.to_string()) {
                        bar.set_position(bar.length().unwrap_or(0));
                        bar.finish_with_message(msg);
                    }
                }
            }
        });
    }
    Arc::new(move |event| match event {
        Event::PlainHttp { registry } => eprintln!("warning: using plain HTTP for {registry}"),
        Event::Resolved { digest, layers } => eprintln!("{digest}: {} layers", layers.len()),
        Event::Exists { digest } => eprintln!("{}: already exists", digest.short()),
        Event::Mounted { digest, from } => eprintln!("{}: mounted from {from}", digest.short()),
        Event::Done { digest } => eprintln!("{}: {verb} done", digest.short()),
        Event::Progress { .. } => {}
    })
}
