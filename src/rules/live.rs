//! Live rules: the current compiled [`Program`], hot-reloaded when the rules directory changes.
//!
//! ```no_run
//! # use sfmc_relay::rules::live::LiveRules;
//! # use std::path::PathBuf;
//! let live = LiveRules::start(Some(PathBuf::from("rules")), true)?;
//! // per event (cheap: one read lock + an `Arc` clone; fine on a tokio worker):
//! let program = live.current();
//! # Ok::<(), sfmc_relay::rules::RuleErrors>(())
//! ```
//!
//! - The rules DIRECTORY is watched (not the files: editors save by writing a temp file and
//!   renaming it over the original, which silently ends a watch on the file). Any
//!   non-access event whose file name is not an editor temp file (`~`, `.swp`, `.tmp`)
//!   schedules a rescan; events are debounced (100 ms by default).
//! - A rescan re-reads the whole directory, validates and compiles it; only a rule set that
//!   compiled without errors replaces the current one, atomically (one pointer swap), so an
//!   event processed with `current()` sees exactly one version, old or new. A failed reload
//!   logs every error with `file:line:col` and keeps the last good rules.
//! - A rescan whose files are byte-for-byte the current version's does not make a new
//!   version.
//! - Each version is `r{counter}-{content hash}`; the counter counts successful loads.
//! - SIGHUP forces a reload (also with `watch: false`).
//! - Without inotify (some network or container file systems) the watcher falls back to
//!   notify's `PollWatcher`; `SFMC_RELAY_POLL_WATCH=1` forces the fallback.
//! - The watcher and the reloads run on their own thread; the last [`LiveRules`] clone to be
//!   dropped stops it.
//!
//! Reload results are logged (through `tracing` when a global subscriber is installed,
//! else to stderr) and sent to [`LiveRules::subscribe`] receivers.

use super::{Diagnostic, RuleErrors, SourceFile};
use crate::env::Env;
use notify::{EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

use super::Program;

/// Where reload messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// `tracing` if a global subscriber is installed, else stderr.
    Auto,
    Stderr,
    Tracing,
    /// Only to subscribers.
    Off,
}

/// Everything [`LiveRules::start_with`] can be told.
#[derive(Clone)]
pub struct Options {
    /// Rules directory; `None` = the embedded default rules (nothing to watch or reload).
    pub dir: Option<PathBuf>,
    /// Without `dir`: the embedded demo rules instead of the defaults ([`super::DEMO`]).
    pub demo: bool,
    /// Watch the directory for changes.
    pub watch: bool,
    /// Reload on SIGHUP (Unix; only with a directory).
    pub sighup: bool,
    /// Quiet time after the last file-system event before a rescan.
    pub debounce: Duration,
    /// `${ENV}` lookups for the rules.
    pub env: Env,
    pub log: Log,
    /// Use notify's `PollWatcher` (no inotify) even when the recommended watcher works.
    pub force_poll: bool,
    /// Poll interval of the fallback watcher.
    pub poll_interval: Duration,
}

impl Options {
    pub fn new(dir: Option<PathBuf>, watch: bool) -> Options {
        Options {
            dir,
            demo: false,
            watch,
            sighup: true,
            debounce: Duration::from_millis(100),
            env: Env::process(),
            log: Log::Auto,
            force_poll: std::env::var_os("SFMC_RELAY_POLL_WATCH").is_some_and(|v| v == "1"),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// What a reload did (sent to [`LiveRules::subscribe`] receivers).
#[derive(Debug, Clone)]
pub enum ReloadEvent {
    /// A new version is now current.
    Reloaded {
        version: String,
        previous: String,
        warnings: Vec<Diagnostic>,
        /// Read + compile time.
        took: Duration,
    },
    /// The rule files failed to load; `kept` is still current.
    Failed { errors: RuleErrors, kept: String },
    /// The files are the current version's (a save without changes, or a broken edit
    /// reverted); nothing changed.
    Unchanged { version: String },
}

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Change,
    Signal,
    Request,
}

enum Msg {
    Change,
    Reload(Cause),
    Stop,
}

struct Shared {
    current: RwLock<Arc<Program>>,
    opts: Options,
    /// Serialises reloads (watcher thread, `reload_now`).
    reload_lock: Mutex<()>,
    /// Number of successful loads so far (the `r{counter}` of the current version).
    counter: AtomicU64,
    reloads: AtomicU64,
    failures: AtomicU64,
    /// Content hash and errors of the last reload attempt, if it failed (a file change that
    /// leaves the same broken files is not reported twice).
    last_failed: Mutex<Option<(String, RuleErrors)>>,
    events: broadcast::Sender<ReloadEvent>,
}

/// Stops the watcher thread when the last [`LiveRules`] clone is dropped.
struct Guard {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Stop);
        }
        if let Some(h) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = h.join();
        }
    }
}

/// The current rule set, kept up to date with its directory. Cheap to clone (shared).
#[derive(Clone)]
pub struct LiveRules {
    shared: Arc<Shared>,
    guard: Arc<Guard>,
}

impl std::fmt::Debug for LiveRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRules")
            .field("dir", &self.shared.opts.dir)
            .field("version", &self.version())
            .field("reloads", &self.reloads())
            .field("failures", &self.failures())
            .finish()
    }
}

fn read_files(dir: Option<&Path>, demo: bool) -> Result<Vec<SourceFile>, RuleErrors> {
    match dir {
        Some(d) => super::read_dir(d),
        None if demo => Ok(super::demo_sources()),
        None => Ok(super::embedded_sources()),
    }
}

impl LiveRules {
    /// Load the rules (`dir`, or the embedded defaults) and, with `watch`, keep them up to
    /// date. Fails with every diagnostic when the initial rule set does not compile.
    pub fn start(dir: Option<PathBuf>, watch: bool) -> Result<LiveRules, RuleErrors> {
        Self::start_with(Options::new(dir, watch))
    }

    pub fn start_with(opts: Options) -> Result<LiveRules, RuleErrors> {
        let files = read_files(opts.dir.as_deref(), opts.demo)?;
        let loaded = super::compile_sources(&files, &opts.env, 1)?;
        let (events, _) = broadcast::channel(64);
        let shared = Arc::new(Shared {
            current: RwLock::new(Arc::new(loaded.program)),
            opts,
            reload_lock: Mutex::new(()),
            counter: AtomicU64::new(1),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_failed: Mutex::new(None),
            events,
        });
        for w in &loaded.warnings {
            shared.log_warn(&w.to_string());
        }
        let dir = shared.opts.dir.clone();
        let (tx, thread) = match dir {
            Some(dir) if shared.opts.watch || shared.opts.sighup => {
                let (tx, rx) = mpsc::channel();
                let watcher = if shared.opts.watch {
                    let w = start_watcher(&shared, &dir, tx.clone());
                    // A save between the initial read and the watch start would be missed:
                    // rescan once (a no-op when nothing changed).
                    let _ = tx.send(Msg::Change);
                    w
                } else {
                    None
                };
                if shared.opts.sighup {
                    start_sighup(&shared, tx.clone());
                }
                let s = shared.clone();
                let thread = std::thread::Builder::new()
                    .name("rules-watcher".into())
                    .spawn(move || {
                        let _watcher = watcher;
                        s.run(rx);
                    })
                    .map_err(|e| {
                        RuleErrors(vec![Diagnostic {
                            severity: super::Severity::Error,
                            file: dir.display().to_string(),
                            line: 0,
                            column: 0,
                            message: format!("cannot start the rules watcher thread: {e}"),
                            source_line: None,
                        }])
                    })?;
                (Some(tx), Some(thread))
            }
            _ => (None, None),
        };
        Ok(LiveRules {
            shared,
            guard: Arc::new(Guard {
                tx,
                thread: Mutex::new(thread),
            }),
        })
    }

    /// The current program. Hold the `Arc` for the whole of one event (or batch line).
    #[inline]
    pub fn current(&self) -> Arc<Program> {
        self.shared.current()
    }

    /// The current version id, e.g. `r2-3fa2c9e1`.
    pub fn version(&self) -> String {
        self.current().version.clone()
    }

    /// Re-read and recompile now, on this thread (blocks for the read + compile: from async
    /// code use `spawn_blocking`, or [`LiveRules::request_reload`]).
    ///
    /// `Ok(version)` is the version current afterwards (the same one when nothing changed);
    /// on `Err` the previous rules stay current.
    pub fn reload_now(&self) -> Result<String, RuleErrors> {
        match self.shared.reload(Cause::Request) {
            ReloadEvent::Reloaded { version, .. } | ReloadEvent::Unchanged { version } => {
                Ok(version)
            }
            ReloadEvent::Failed { errors, .. } => Err(errors),
        }
    }

    /// Ask the watcher thread to reload soon (never blocks). False when there is no watcher
    /// thread (embedded rules, or neither watching nor SIGHUP enabled).
    pub fn request_reload(&self) -> bool {
        self.guard
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Msg::Reload(Cause::Request)).is_ok())
    }

    /// Successful reloads since start (the initial load not counted).
    pub fn reloads(&self) -> u64 {
        self.shared.reloads.load(Ordering::Relaxed)
    }

    /// Failed reloads since start.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// The rules directory (`None` = embedded rules).
    pub fn dir(&self) -> Option<&Path> {
        self.shared.opts.dir.as_deref()
    }

    /// Reload results from now on (a `tokio` broadcast receiver: `recv().await` in async
    /// code, `blocking_recv()`/`try_recv()` elsewhere).
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.shared.events.subscribe()
    }
}

/// Whether a changed file's name is an editor's temp or swap file.
fn ignored_name(p: &Path) -> bool {
    let Some(name) = p.file_name().map(|n| n.to_string_lossy()) else {
        return false;
    };
    name.ends_with('~') || name.ends_with(".swp") || name.ends_with(".tmp")
}

/// Whether a notify event should cause a rescan.
fn relevant(ev: &notify::Event) -> bool {
    if matches!(ev.kind, EventKind::Access(_)) {
        return false;
    }
    // No paths (e.g. a rescan notice): rescan to be safe.
    ev.paths.is_empty() || ev.paths.iter().any(|p| !ignored_name(p))
}

fn start_watcher(
    shared: &Arc<Shared>,
    dir: &Path,
    tx: mpsc::Sender<Msg>,
) -> Option<Box<dyn Watcher + Send>> {
    let handler = move |res: notify::Result<notify::Event>| {
        let relevant = match &res {
            Ok(ev) => relevant(ev),
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(Msg::Change);
        }
    };
    if !shared.opts.force_poll {
        let tried = notify::recommended_watcher(handler.clone()).and_then(|mut w| {
            w.watch(dir, RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        match tried {
            Ok(w) => return Some(Box::new(w)),
            Err(e) => shared.log_warn(&format!(
                "rules: cannot watch {} with the native watcher ({e}); polling every {:?} instead",
                dir.display(),
                shared.opts.poll_interval
            )),
        }
    }
    let config = notify::Config::default()
        .with_poll_interval(shared.opts.poll_interval)
        .with_compare_contents(true);
    let tried = notify::PollWatcher::new(handler, config).and_then(|mut w| {
        w.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match tried {
        Ok(w) => Some(Box::new(w)),
        Err(e) => {
            shared.log_error(&format!(
                "rules: cannot watch {}: {e}; hot reload is off (SIGHUP still reloads)",
                dir.display()
            ));
            None
        }
    }
}

#[cfg(unix)]
fn start_sighup(shared: &Arc<Shared>, tx: mpsc::Sender<Msg>) {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            shared.log_warn(&format!("rules: SIGHUP reload unavailable: {e}"));
            return;
        }
    };
    // Register the handler before returning, so a SIGHUP right after start reloads
    // instead of terminating the process.
    let mut hup = match runtime.block_on(async { signal(SignalKind::hangup()) }) {
        Ok(s) => s,
        Err(e) => {
            shared.log_warn(&format!("rules: SIGHUP reload unavailable: {e}"));
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("rules-sighup".into())
        .spawn(move || {
            runtime.block_on(async move {
                while hup.recv().await.is_some() {
                    if tx.send(Msg::Reload(Cause::Signal)).is_err() {
                        break;
                    }
                }
            })
        });
    if let Err(e) = spawned {
        shared.log_warn(&format!("rules: SIGHUP reload unavailable: {e}"));
    }
}

#[cfg(not(unix))]
fn start_sighup(_shared: &Arc<Shared>, _tx: mpsc::Sender<Msg>) {}

impl Shared {
    fn current(&self) -> Arc<Program> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The watcher thread: debounce changes, reload, until `Stop`.
    fn run(&self, rx: mpsc::Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            let cause = match msg {
                Msg::Stop => return,
                Msg::Reload(c) => c,
                Msg::Change => {
                    // Wait for a quiet period (editors write, rename, chmod in a burst),
                    // but never longer than 20 debounce periods in total.
                    let deadline = Instant::now() + self.opts.debounce * 20;
                    let mut cause = Cause::Change;
                    loop {
                        let wait = self
                            .opts
                            .debounce
                            .min(deadline.saturating_duration_since(Instant::now()));
                        if wait.is_zero() {
                            break;
                        }
                        match rx.recv_timeout(wait) {
                            Ok(Msg::Change) => {}
                            Ok(Msg::Reload(c)) => cause = c,
                            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                    cause
                }
            };
            self.reload(cause);
        }
    }

    fn reload(&self, cause: Cause) -> ReloadEvent {
        let _serial = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let previous = self.current();
        let event = match read_files(self.opts.dir.as_deref(), self.opts.demo) {
            Err(errors) => self.failed(errors, &previous, None),
            Ok(files) => {
                let hash = super::content_hash(&files);
                let unchanged = previous.version.ends_with(&format!("-{hash}"));
                if unchanged {
                    let was_failing = self
                        .last_failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take()
                        .is_some();
                    if was_failing {
                        self.log_info(&format!(
                            "rules: files are back to the current version {}; nothing to reload",
                            previous.version
                        ));
                    } else if cause != Cause::Change {
                        self.log_info(&format!(
                            "rules: unchanged, still {} ({})",
                            previous.version,
                            cause_name(cause)
                        ));
                    }
                    ReloadEvent::Unchanged {
                        version: previous.version.clone(),
                    }
                } else if let Some((_, errors)) = self
                    .last_failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .filter(|(h, _)| cause == Cause::Change && *h == hash)
                {
                    ReloadEvent::Failed {
                        errors: errors.clone(),
                        kept: previous.version.clone(),
                    }
                } else {
                    let n = self.counter.load(Ordering::Relaxed) + 1;
                    match super::compile_sources(&files, &self.opts.env, n) {
                        Err(errors) => self.failed(errors, &previous, Some(hash)),
                        Ok(loaded) => {
                            let version = loaded.program.version.clone();
                            self.counter.store(n, Ordering::Relaxed);
                            *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                                Arc::new(loaded.program);
                            self.reloads.fetch_add(1, Ordering::Relaxed);
                            *self.last_failed.lock().unwrap_or_else(|e| e.into_inner()) = None;
                            let took = started.elapsed();
                            self.log_info(&format!(
                                "rules: reloaded {} -> {version} ({} file(s), {} ms, {})",
                                previous.version,
                                files.len(),
                                took.as_millis(),
                                cause_name(cause)
                            ));
                            for w in &loaded.warnings {
                                self.log_warn(&w.to_string());
                            }
                            ReloadEvent::Reloaded {
                                version,
                                previous: previous.version.clone(),
                                warnings: loaded.warnings,
                                took,
                            }
                        }
                    }
                }
            }
        };
        let _ = self.events.send(event.clone());
        event
    }

    fn failed(&self, errors: RuleErrors, kept: &Program, hash: Option<String>) -> ReloadEvent {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_failed.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((hash.unwrap_or_default(), errors.clone()));
        self.log_error(&format!(
            "rules: reload failed; keeping {} (fix the files and save again)\n{errors}",
            kept.version
        ));
        ReloadEvent::Failed {
            errors,
            kept: kept.version.clone(),
        }
    }

    fn use_tracing(&self) -> bool {
        match self.opts.log {
            Log::Tracing => true,
            Log::Auto => tracing::dispatcher::has_been_set(),
            Log::Stderr | Log::Off => false,
        }
    }

    fn log_info(&self, msg: &str) {
        match self.opts.log {
            Log::Off => {}
            _ if self.use_tracing() => tracing::info!(target: "sfmc_relay::rules", "{msg}"),
            _ => eprintln!("{msg}"),
        }
    }

    fn log_warn(&self, msg: &str) {
        match self.opts.log {
            Log::Off => {}
            _ if self.use_tracing() => tracing::warn!(target: "sfmc_relay::rules", "{msg}"),
            _ => eprintln!("{msg}"),
        }
    }

    fn log_error(&self, msg: &str) {
        match self.opts.log {
            Log::Off => {}
            _ if self.use_tracing() => tracing::error!(target: "sfmc_relay::rules", "{msg}"),
            _ => eprintln!("{msg}"),
        }
    }
}

fn cause_name(c: Cause) -> &'static str {
    match c {
        Cause::Change => "file change",
        Cause::Signal => "SIGHUP",
        Cause::Request => "requested",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shareable_across_threads_and_tasks() {
        fn send_sync<T: Send + Sync + Clone + 'static>() {}
        send_sync::<LiveRules>();
    }

    #[test]
    fn temp_names_are_ignored() {
        assert!(ignored_name(Path::new("/r/rules.yaml~")));
        assert!(ignored_name(Path::new("/r/.rules.yaml.swp")));
        assert!(ignored_name(Path::new("/r/rules.yaml.tmp")));
        assert!(!ignored_name(Path::new("/r/rules.yaml")));
        assert!(!ignored_name(Path::new("/r/..data")));
    }

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join("rules.yaml"), text).unwrap();
    }

    #[test]
    fn reload_now_swaps_only_good_rules() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "track:\n  - event: A\n    data_extension: one\n",
        );
        let mut opts = Options::new(Some(dir.path().to_path_buf()), false);
        opts.sighup = false;
        opts.log = Log::Off;
        let live = LiveRules::start_with(opts).unwrap();
        let mut events = live.subscribe();
        let v1 = live.version();
        assert!(v1.starts_with("r1-"), "{v1}");
        assert_eq!(
            live.reload_now().unwrap(),
            v1,
            "unchanged files: same version"
        );

        write(dir.path(), "track:\n  - event: A\n    data_extensio: two\n");
        let err = live.reload_now().unwrap_err();
        assert!(err.to_string().contains("rules.yaml:3:"), "{err}");
        assert_eq!(live.version(), v1);
        assert_eq!(live.failures(), 1);

        write(
            dir.path(),
            "track:\n  - event: A\n    data_extension: two\n",
        );
        let v2 = live.reload_now().unwrap();
        assert!(v2.starts_with("r2-"), "{v2}");
        assert_eq!(
            live.current().mappings[0].data_extension.as_deref(),
            Some("two")
        );
        assert_eq!(live.reloads(), 1);
        let kinds: Vec<&str> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| match e {
                ReloadEvent::Unchanged { .. } => "unchanged",
                ReloadEvent::Failed { .. } => "failed",
                ReloadEvent::Reloaded { .. } => "reloaded",
            })
            .collect();
        assert_eq!(kinds, ["unchanged", "failed", "reloaded"]);
    }
}
