//! Forwards `tracing` events from the Rust side to Erlang's `logger`.
//!
//! Events can fire on any thread, including scheduler threads where `OwnedEnv::send_and_clear`
//! is forbidden, so the layer only pushes records on a channel; one plain thread sends them to
//! the Erlang process registered with `log_init/2` (`quic_dist_log`), which calls `logger`.

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

use rustler::{Encoder, LocalPid, OwnedEnv};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

use crate::atoms;

struct Record {
    level: Level,
    target: String,
    message: String,
}

static SINK: OnceLock<Mutex<Sender<Record>>> = OnceLock::new();
static RECEIVER: Mutex<Option<LocalPid>> = Mutex::new(None);

struct ErlangLayer;

struct MessageVisitor(String);

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for ErlangLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = MessageVisitor(String::new());
        event.record(&mut visitor);
        if let Some(sink) = SINK.get() {
            if let Ok(tx) = sink.lock() {
                let _ = tx.send(Record {
                    level: *event.metadata().level(),
                    target: event.metadata().target().to_string(),
                    message: visitor.0,
                });
            }
        }
    }
}

fn forward(rx: mpsc::Receiver<Record>) {
    let mut env = OwnedEnv::new();
    for record in rx {
        let pid = RECEIVER.lock().ok().and_then(|g| *g);
        match pid {
            Some(pid) => {
                let _ = env.send_and_clear(&pid, |env| {
                    let level = match record.level {
                        Level::ERROR => atoms::error(),
                        Level::WARN => atoms::warning(),
                        Level::INFO => atoms::info(),
                        _ => atoms::debug(),
                    };
                    (atoms::quic_dist_log(), level, record.target, record.message).encode(env)
                });
            }
            None => eprintln!(
                "quic_dist {} {}: {}",
                record.level, record.target, record.message
            ),
        }
    }
}

/// Sets the Erlang process that receives log records; the first call also installs the
/// subscriber with `filter` (tracing `Targets` syntax, e.g. `quinn=warn,quic_dist_transport=info`).
pub fn init(receiver: LocalPid, filter: &str) -> Result<(), String> {
    if let Ok(mut g) = RECEIVER.lock() {
        *g = Some(receiver);
    }
    if SINK.get().is_some() {
        return Ok(());
    }
    let targets =
        Targets::from_str(filter).map_err(|e| format!("bad log filter {filter:?}: {e}"))?;
    let (tx, rx) = mpsc::channel();
    if SINK.set(Mutex::new(tx)).is_err() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("quic_dist_log".into())
        .spawn(move || forward(rx))
        .map_err(|e| format!("cannot start log thread: {e}"))?;
    tracing_subscriber::registry()
        .with(ErlangLayer.with_filter(targets))
        .try_init()
        .map_err(|e| format!("cannot install log subscriber: {e}"))
}
