//! Rule files -> [`Program`]: merging, validation and compilation.
//!
//! Every problem is collected (not only the first) as a [`Diagnostic`] naming
//! `file:line:col`; the rule set compiles only when there are no errors.

use super::casing::{Casing, Style};
use super::condition::{Condition, Op};
use super::diag::{Diagnostic, Severity};
use super::env::interpolate;
use super::path::KeyPath;
use super::program::*;
use super::schema::*;
use crate::env::Env;
use regex::Regex;
use serde_json::Value;
use serde_saphyr::Location;
use std::collections::HashMap;
use std::time::Duration;

/// One rule file's text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Shown in diagnostics (a path, or `<embedded>/name.yaml`).
    pub name: String,
    pub text: String,
}

struct Parsed<'s> {
    src: &'s SourceFile,
    file: RuleFile,
}

/// Diagnostics sink bound to one file.
struct Ctx<'a> {
    src: &'a SourceFile,
    env: &'a Env,
    diags: &'a mut Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn at(&self, loc: &Location) -> String {
        format!("{}:{}:{}", self.src.name, loc.line(), loc.column())
    }

    fn push(&mut self, severity: Severity, loc: &Location, message: String) {
        self.diags.push(diagnostic(
            self.src,
            severity,
            loc.line(),
            loc.column(),
            message,
        ));
    }

    fn err(&mut self, loc: &Location, message: impl Into<String>) {
        self.push(Severity::Error, loc, message.into());
    }

    fn warn(&mut self, loc: &Location, message: impl Into<String>) {
        self.push(Severity::Warning, loc, message.into());
    }

    /// A string value with `${ENV}` interpolated.
    fn text(&mut self, s: &Str) -> Option<String> {
        match interpolate(&s.value, self.env) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(&s.referenced, e);
                None
            }
        }
    }

    /// A non-empty string (after interpolation); `None` for empty, with no error.
    fn opt_text(&mut self, s: &Option<Str>) -> Option<String> {
        s.as_ref()
            .and_then(|s| self.text(s))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    /// A raw scalar as interpolated text (strings) or JSON text (numbers, booleans).
    fn scalar(&mut self, r: &Raw, expected: &str) -> Option<String> {
        match &r.value {
            Value::String(s) => match interpolate(s, self.env) {
                Ok(v) => Some(v.trim().to_string()),
                Err(e) => {
                    self.err(&r.referenced, e);
                    None
                }
            },
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.err(
                    &r.referenced,
                    format!("expected {expected}, found {}", kind_of(other)),
                );
                None
            }
        }
    }

    fn bool(&mut self, r: &Option<Raw>, default: bool) -> bool {
        let Some(r) = r else { return default };
        match self.scalar(r, "true or false").as_deref() {
            Some("true" | "yes" | "on") => true,
            Some("false" | "no" | "off") => false,
            Some(other) => {
                self.err(
                    &r.referenced,
                    format!("expected true or false, found {other:?}"),
                );
                default
            }
            None => default,
        }
    }

    fn uint(&mut self, r: &Option<Raw>, default: u64, min: u64, max: u64) -> u64 {
        let Some(r) = r else { return default };
        let Some(t) = self.scalar(r, "a whole number") else {
            return default;
        };
        match t.replace('_', "").parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            Ok(n) => {
                self.err(
                    &r.referenced,
                    format!("{n} is out of range: expected {min} to {max}"),
                );
                default
            }
            Err(_) => {
                self.err(
                    &r.referenced,
                    format!("expected a whole number, found {t:?}"),
                );
                default
            }
        }
    }

    fn duration(&mut self, r: &Option<Raw>, default: Duration) -> Duration {
        let Some(r) = r else { return default };
        let Some(t) = self.scalar(r, "a duration like 200ms, 5s or 10m") else {
            return default;
        };
        match parse_duration(&t) {
            Some(d) => d,
            None => {
                self.err(
                    &r.referenced,
                    format!("expected a duration like 200ms, 5s, 10m or 1h, found {t:?}"),
                );
                default
            }
        }
    }

    fn path(&mut self, s: &Str) -> Option<KeyPath> {
        let t = self.text(s)?;
        match KeyPath::compile(&t) {
            Ok(p) => Some(p),
            Err(e) => {
                self.err(&s.referenced, e);
                None
            }
        }
    }
}

pub(crate) fn diagnostic(
    src: &SourceFile,
    severity: Severity,
    line: u64,
    column: u64,
    message: String,
) -> Diagnostic {
    let source_line = (line > 0)
        .then(|| src.text.lines().nth(line as usize - 1))
        .flatten()
        .map(str::to_string);
    Diagnostic {
        severity,
        file: src.name.clone(),
        line,
        column,
        message,
        source_line,
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Parse one file's YAML. A syntax or schema error becomes a diagnostic.
fn parse_file(src: &SourceFile) -> Result<RuleFile, Diagnostic> {
    if src.text.trim().is_empty() {
        return Ok(RuleFile::default());
    }
    serde_saphyr::from_str::<Option<RuleFile>>(&src.text)
        .map(Option::unwrap_or_default)
        .map_err(|e| {
            let (line, col) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            diagnostic(
                src,
                Severity::Error,
                line,
                col,
                yaml_message(&e.to_string()),
            )
        })
}

/// serde-saphyr renders "error: line L column C: message" plus a snippet; keep the message.
fn yaml_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered).trim();
    let first = first.strip_prefix("error:").unwrap_or(first).trim();
    let msg = match first.find(": ") {
        Some(i) if first.starts_with("line ") => &first[i + 2..],
        _ => first,
    };
    let msg = msg.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    if msg.contains("unknown field") {
        msg.replace("expected one of", "expected one of:")
    } else {
        msg
    }
}

/// A singleton section and where it came from.
fn single<'p, T>(
    parsed: &'p [Parsed<'p>],
    diags: &mut Vec<Diagnostic>,
    name: &str,
    get: impl Fn(&'p RuleFile) -> Option<&'p Spanned<T>>,
) -> Option<(&'p SourceFile, &'p Spanned<T>)> {
    let mut found: Option<(&SourceFile, &Spanned<T>)> = None;
    for p in parsed {
        if let Some(s) = get(&p.file) {
            if let Some((first_src, first)) = found {
                diags.push(diagnostic(
                    p.src,
                    Severity::Error,
                    s.referenced.line(),
                    s.referenced.column(),
                    format!(
                        "`{name}` is already defined at {}:{}:{}; define each section in one file only",
                        first_src.name,
                        first.referenced.line(),
                        first.referenced.column()
                    ),
                ));
            } else {
                found = Some((p.src, s));
            }
        }
    }
    found
}

/// Compile a rule set from its files (already in load order).
///
/// On success returns the program and any warnings; on failure every diagnostic.
pub fn compile(
    files: &[SourceFile],
    env: &Env,
    version: String,
) -> Result<(Program, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut parsed = Vec::new();
    for src in files {
        match parse_file(src) {
            Ok(file) => parsed.push(Parsed { src, file }),
            Err(d) => diags.push(d),
        }
    }
    let mut program = Program {
        version,
        files: files.iter().map(|f| f.name.clone()).collect(),
        settings: Settings::default(),
        casing: Casing::new(Style::Title),
        nested: Nested::Drop,
        nulls: Nulls::Drop,
        dates: Vec::new(),
        context_columns: Vec::new(),
        context_paths: Default::default(),
        identify: Identify {
            contact_key: ["userId", "traits.email", "context.traits.email"]
                .iter()
                .map(|p| KeyPath::compile(p).expect("built-in path"))
                .collect(),
            scrub: vec![':'],
            max_contact_key_length: 254,
            create_contacts: true,
            data_extension: None,
            include_context: true,
        },
        mappings: Vec::new(),
        skip: Vec::new(),
        reject: Vec::new(),
    };

    macro_rules! ctx {
        ($src:expr) => {
            Ctx {
                src: $src,
                env,
                diags: &mut diags,
            }
        };
    }

    if let Some((src, s)) = single(&parsed, &mut diags, "sfmc", |f| f.sfmc.as_ref()) {
        let mut c = ctx!(src);
        program.settings.subdomain = c.opt_text(&s.value.subdomain);
        program.settings.account_id = c.opt_text(&s.value.account_id);
    }
    if let Some((src, s)) = single(&parsed, &mut diags, "delivery", |f| f.delivery.as_ref()) {
        let mut c = ctx!(src);
        program.settings.delivery = compile_delivery(&mut c, &s.value);
    }
    if let Some((src, s)) = single(&parsed, &mut diags, "casing", |f| f.casing.as_ref()) {
        let mut c = ctx!(src);
        program.casing = compile_casing(&mut c, &s.value);
    }
    if let Some((src, s)) = single(&parsed, &mut diags, "nested", |f| f.nested.as_ref()) {
        let mut c = ctx!(src);
        match c.text(s).as_deref().map(str::trim) {
            Some("drop") => program.nested = Nested::Drop,
            Some("flatten") => program.nested = Nested::Flatten,
            Some(other) => c.err(
                &s.referenced,
                format!("unknown `nested` value {other:?}: expected drop or flatten"),
            ),
            None => {}
        }
    }
    if let Some((src, s)) = single(&parsed, &mut diags, "nulls", |f| f.nulls.as_ref()) {
        let mut c = ctx!(src);
        match c.text(s).as_deref().map(str::trim) {
            Some("drop") => program.nulls = Nulls::Drop,
            Some("empty") => program.nulls = Nulls::Empty,
            Some(other) => c.err(
                &s.referenced,
                format!("unknown `nulls` value {other:?}: expected drop or empty"),
            ),
            None => {}
        }
    }
    if let Some((src, s)) = single(&parsed, &mut diags, "dates", |f| f.dates.as_ref()) {
        let mut c = ctx!(src);
        let mut seen: HashMap<String, Location> = HashMap::new();
        for d in &s.value {
            let Some(t) = c.text(d) else { continue };
            let t = t.trim().to_string();
            if let Some(first) = seen.get(&t.to_lowercase()) {
                let at = c.at(first);
                c.warn(
                    &d.referenced,
                    format!("date column {t:?} is listed twice (first at {at})"),
                );
                continue;
            }
            seen.insert(t.to_lowercase(), d.referenced);
            program.dates.push(t);
        }
    }
    if let Some((src, s)) = single(&parsed, &mut diags, "context_columns", |f| {
        f.context_columns.as_ref()
    }) {
        let mut c = ctx!(src);
        let mut columns: HashMap<String, Location> = HashMap::new();
        for (path, column) in &s.value {
            let p = c.path(path);
            let col = c.text(column).map(|t| t.trim().to_string());
            if let Some(col) = &col {
                if col.is_empty() {
                    c.err(
                        &column.referenced,
                        "empty column name: expected e.g. `App Name`",
                    );
                    continue;
                }
                if let Some(first) = columns.get(&col.to_lowercase()) {
                    let at = c.at(first);
                    c.warn(
                        &column.referenced,
                        format!("column {col:?} is also filled by the context path at {at}; the later one wins"),
                    );
                }
                columns.insert(col.to_lowercase(), column.referenced);
            }
            if let (Some(path), Some(column)) = (p, col) {
                program.context_columns.push(ContextColumn { path, column });
            }
        }
    }
    if let Some((src, s)) = single(&parsed, &mut diags, "identify", |f| f.identify.as_ref()) {
        let mut c = ctx!(src);
        compile_identify(&mut c, &s.value, &mut program.identify);
    }

    // Lists: concatenated across files, duplicates reported.
    let mut mapping_seen: HashMap<(EventKind, String, String), String> = HashMap::new();
    let casing = program.casing.clone();
    for p in &parsed {
        let mut c = ctx!(p.src);
        if let Some(track) = &p.file.track {
            for m in &track.value {
                if let Some(m) = compile_mapping(&mut c, m, &mut mapping_seen, &casing) {
                    program.mappings.push(m);
                }
            }
        }
        for (list, out, what) in [
            (&p.file.skip, &mut program.skip, "skip"),
            (&p.file.reject, &mut program.reject, "reject"),
        ] {
            if let Some(list) = list {
                for f in &list.value {
                    if let Some(f) = compile_filter(&mut c, f, what) {
                        out.push(f);
                    }
                }
            }
        }
    }

    program.context_paths =
        super::path::PathSet::new(program.context_columns.iter().map(|c| &c.path));
    if diags.iter().any(|d| d.severity == Severity::Error) {
        Err(diags)
    } else {
        Ok((program, diags))
    }
}

fn compile_delivery(c: &mut Ctx, d: &DeliverySection) -> Delivery {
    let def = Delivery::default();
    let rps = c.uint(
        &d.requests_per_second,
        def.requests_per_second.map_or(0, u64::from),
        0,
        100_000,
    );
    let mut out = Delivery {
        batch_rows: c.uint(&d.batch_rows, def.batch_rows as u64, 1, 10_000) as usize,
        batch_bytes: c.uint(&d.batch_bytes, def.batch_bytes as u64, 1024, 5_000_000) as usize,
        linger: c.duration(&d.linger, def.linger),
        requests_per_second: (rps > 0).then_some(rps as u32),
        max_in_flight: c.uint(&d.max_in_flight, def.max_in_flight as u64, 1, 1024) as usize,
        request_timeout: c.duration(&d.request_timeout, def.request_timeout),
        contact_cache: c.uint(&d.contact_cache, def.contact_cache as u64, 0, 100_000_000) as usize,
        contact_batch: c.uint(&d.contact_batch, def.contact_batch as u64, 1, 1000) as usize,
        async_threshold: c.uint(&d.async_threshold, def.async_threshold as u64, 0, 1_000_000)
            as usize,
        async_batch_rows: c.uint(&d.async_batch_rows, def.async_batch_rows as u64, 1, 32_000)
            as usize,
        ..def
    };
    if let Some(r) = &d.retry {
        let r = &r.value;
        out.retry_attempts = c.uint(&r.attempts, out.retry_attempts as u64, 1, 1000) as u32;
        out.retry_within = c.duration(&r.within, out.retry_within);
        out.retry_base_delay = c.duration(&r.base_delay, out.retry_base_delay);
        out.retry_max_delay = c.duration(&r.max_delay, out.retry_max_delay);
    }
    out
}

fn compile_casing(c: &mut Ctx, s: &CasingSection) -> Casing {
    let style = match &s.style {
        None => Style::Title,
        Some(st) => match c.text(st) {
            Some(t) => Style::parse(&t).unwrap_or_else(|| {
                c.err(
                    &st.referenced,
                    format!(
                        "unknown casing style {t:?}: expected one of {}",
                        Style::NAMES
                    ),
                );
                Style::Title
            }),
            None => Style::Title,
        },
    };
    let mut casing = Casing::new(style);
    if let Some(ov) = &s.overrides {
        for (k, v) in &ov.value {
            let (Some(key), Some(col)) = (c.text(k), c.text(v)) else {
                continue;
            };
            if col.trim().is_empty() {
                c.err(
                    &v.referenced,
                    format!("override for {key:?} is empty: expected a column name"),
                );
                continue;
            }
            if let Some(prev) = casing.add_override(&key, col.trim()) {
                c.warn(
                    &k.referenced,
                    format!("override {key:?} -> {col:?} shadows an earlier override to {prev:?} (both style to the same column)"),
                );
            }
        }
    }
    casing
}

fn compile_identify(c: &mut Ctx, s: &IdentifySection, out: &mut Identify) {
    if let Some(keys) = &s.contact_key {
        if keys.value.is_empty() {
            c.err(
                &keys.referenced,
                "empty `contact_key` list: expected paths such as [userId, traits.email]",
            );
        }
        out.contact_key = keys.value.iter().filter_map(|k| c.path(k)).collect();
    }
    if let Some(r) = &s.remove_from_contact_key
        && let Some(t) = c.text(r)
    {
        out.scrub = t.chars().collect();
    }
    out.max_contact_key_length = c.uint(
        &s.max_contact_key_length,
        out.max_contact_key_length as u64,
        1,
        100_000,
    ) as usize;
    out.create_contacts = c.bool(&s.create_contacts, out.create_contacts);
    out.data_extension = c.opt_text(&s.data_extension);
    out.include_context = c.bool(&s.include_context, out.include_context);
}

fn compile_mapping(
    c: &mut Ctx,
    m: &Spanned<MappingSection>,
    seen: &mut HashMap<(EventKind, String, String), String>,
    casing: &Casing,
) -> Option<Mapping> {
    let origin = c.at(&m.referenced);
    let v = &m.value;
    let mut ok = true;
    let kind = match &v.kind {
        None => EventKind::Track,
        Some(k) => match c
            .text(k)
            .as_deref()
            .map(str::trim)
            .and_then(EventKind::parse)
        {
            Some(kind) => kind,
            None => {
                c.err(
                    &k.referenced,
                    format!(
                        "unknown event type {:?}: expected one of {}",
                        k.value,
                        EventKind::NAMES
                    ),
                );
                return None;
            }
        },
    };
    let mut events = Vec::new();
    if let Some(e) = &v.event {
        for name in e.value.items() {
            match interpolate(name, c.env) {
                Ok(n) if !n.trim().is_empty() => events.push(n.trim().to_string()),
                Ok(_) => {
                    c.err(&e.referenced, "empty event name");
                    ok = false;
                }
                Err(err) => {
                    c.err(&e.referenced, err);
                    ok = false;
                }
            }
        }
        if kind.name_field().is_none() {
            c.err(
                &e.referenced,
                format!("`event:` cannot be used with type {}: only track, page and screen events have names", kind.name()),
            );
            ok = false;
        }
    } else if kind == EventKind::Track {
        c.err(
            &m.referenced,
            "a track mapping needs `event:` (the event name, e.g. `event: Order Completed`)",
        );
        ok = false;
    }
    let data_extension = c.opt_text(&v.data_extension);
    let api_event = c.opt_text(&v.api_event);
    if data_extension.is_none() && api_event.is_none() {
        c.err(
            &m.referenced,
            "mapping sends nothing: expected `data_extension:` (a data extension external key) and/or `api_event:` (an event definition key)",
        );
        ok = false;
    }
    let uuid = c.bool(&v.uuid_primary_key, false);
    let mut columns = Vec::new();
    if let Some(pk) = &v.primary_key {
        let mut lower_seen = Vec::new();
        for part in pk.value.items() {
            let t = match interpolate(part, c.env) {
                Ok(t) => t,
                Err(e) => {
                    c.err(&pk.referenced, e);
                    ok = false;
                    continue;
                }
            };
            for col in t.split(',').map(str::trim) {
                if col.is_empty() {
                    c.err(&pk.referenced, format!("empty primary key name in {t:?}: expected names separated by commas, e.g. `Order Id, Contact Key`"));
                    ok = false;
                } else if lower_seen.contains(&col.to_lowercase()) {
                    c.err(
                        &pk.referenced,
                        format!("primary key {col:?} is listed twice"),
                    );
                    ok = false;
                } else {
                    lower_seen.push(col.to_lowercase());
                    columns.push(col.to_string());
                }
            }
        }
        if uuid {
            c.warn(
                &pk.referenced,
                "`uuid_primary_key: true` overrides `primary_key`",
            );
        }
        if data_extension.is_none() {
            c.warn(
                &pk.referenced,
                "`primary_key` has no effect without `data_extension`",
            );
        }
    }
    if columns.is_empty() {
        columns.push("Contact Key".to_string());
    }
    let data = match &v.data {
        None => None,
        Some(list) => {
            if api_event.is_none() {
                c.warn(
                    &list.referenced,
                    "`data` has no effect without `api_event` (it lists what goes into an API event's Data)",
                );
            }
            let fields = compile_data(c, list, casing);
            if fields.is_none() {
                ok = false;
            }
            fields
        }
    };
    let include_context = c.bool(&v.include_context, true);
    let when = v.when.as_ref().and_then(|w| compile_condition(c, w));
    if v.when.is_some() && when.is_none() {
        ok = false;
    }
    let names: Vec<String> = if events.is_empty() {
        vec![String::new()]
    } else {
        events.clone()
    };
    for name in &names {
        for target in [
            data_extension
                .as_ref()
                .map(|d| format!("data extension {d}")),
            api_event.as_ref().map(|a| format!("api event {a}")),
        ]
        .into_iter()
        .flatten()
        {
            let key = (kind, name.clone(), target.to_lowercase());
            if v.when.is_none() {
                if let Some(first) = seen.get(&key) {
                    c.err(
                        &m.referenced,
                        format!(
                            "duplicate mapping: {} {} already goes to {target} at {first}",
                            kind.name(),
                            if name.is_empty() {
                                "events".to_string()
                            } else {
                                format!("{name:?}")
                            }
                        ),
                    );
                    ok = false;
                } else {
                    seen.insert(key, origin.clone());
                }
            }
        }
    }
    ok.then(|| Mapping {
        kind,
        events,
        data_extension,
        primary_key: if uuid {
            PrimaryKey::Uuid
        } else {
            PrimaryKey::Columns(columns)
        },
        api_event,
        data,
        include_context,
        when,
        origin,
    })
}

/// An API event's `data:` list: `key` (the field is the key after casing) or
/// `{key: Field Name}` (a rename). `None` after an error.
fn compile_data(c: &mut Ctx, list: &Spanned<Vec<Raw>>, casing: &Casing) -> Option<Vec<DataField>> {
    const EXPECTED: &str = "expected a property name (`plan`) or a rename (`{ plan: Plan Name }`)";
    let mut ok = true;
    let mut out: Vec<DataField> = Vec::new();
    for entry in &list.value {
        let at = &entry.referenced;
        let (key, field) = match &entry.value {
            Value::String(s) => (s.clone(), None),
            Value::Object(m) if m.len() == 1 => {
                let Some((k, f)) = m.iter().next() else {
                    continue;
                };
                let Value::String(f) = f else {
                    c.err(
                        at,
                        format!("rename of {k:?} must be a field name, found {}", kind_of(f)),
                    );
                    ok = false;
                    continue;
                };
                (k.clone(), Some(f.clone()))
            }
            Value::Object(m) => {
                c.err(
                    at,
                    format!(
                        "a `data` entry renames one property, found {} in one entry: {EXPECTED}",
                        m.len()
                    ),
                );
                ok = false;
                continue;
            }
            other => {
                c.err(at, format!("{EXPECTED}, found {}", kind_of(other)));
                ok = false;
                continue;
            }
        };
        let interpolated = |c: &mut Ctx, s: &str| match interpolate(s, c.env) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            Ok(_) => {
                c.err(at, format!("empty name in `data`: {EXPECTED}"));
                None
            }
            Err(e) => {
                c.err(at, e);
                None
            }
        };
        let Some(key) = interpolated(c, &key) else {
            ok = false;
            continue;
        };
        let field = match field {
            Some(f) => match interpolated(c, &f) {
                Some(f) => Some(f),
                None => {
                    ok = false;
                    continue;
                }
            },
            None => None,
        };
        let column = casing.apply(&key).into_owned();
        let field = field.unwrap_or_else(|| column.clone());
        if let Some(prev) = out.iter().find(|d| d.column.eq_ignore_ascii_case(&column)) {
            c.err(
                at,
                format!(
                    "{key:?} is listed twice in `data` (it becomes the column {column:?}, like the entry for field {:?})",
                    prev.field
                ),
            );
            ok = false;
            continue;
        }
        if out.iter().any(|d| d.field.eq_ignore_ascii_case(&field)) {
            c.err(
                at,
                format!("two `data` entries become the field {field:?}: a field can be sent once"),
            );
            ok = false;
            continue;
        }
        if field.eq_ignore_ascii_case("eventInstanceId") {
            c.warn(
                at,
                "`eventInstanceId` is reserved in Data: SFMC ignores the value and logs an id of its own",
            );
        }
        out.push(DataField { column, field });
    }
    ok.then_some(out)
}

fn compile_filter(c: &mut Ctx, f: &Spanned<FilterSection>, what: &str) -> Option<Filter> {
    let origin = c.at(&f.referenced);
    let v = &f.value;
    let when = v.when.as_ref().map(|w| compile_condition(c, w));
    let unless = v.unless.as_ref().map(|w| compile_condition(c, w));
    let condition = match (when, unless) {
        (None, None) => {
            c.err(&f.referenced, format!("`{what}` entry needs `when:` or `unless:` (a condition such as `{{ path: $.userId, equals: test }}`)"));
            return None;
        }
        (Some(None), _) | (_, Some(None)) => return None,
        (Some(Some(w)), None) => w,
        (None, Some(Some(u))) => Condition::Not(Box::new(u)),
        (Some(Some(w)), Some(Some(u))) => Condition::All(vec![w, Condition::Not(Box::new(u))]),
    };
    let reason = match &v.reason {
        Some(r) => c.text(r)?,
        None => format!("{what} filter at {origin}: {}", condition.describe()),
    };
    Some(Filter {
        condition,
        reason,
        origin,
    })
}

const OPS: &str = "equals, not_equals, in, not_in, matches, exists";

fn compile_condition(c: &mut Ctx, s: &Spanned<ConditionSection>) -> Option<Condition> {
    let v = &s.value;
    let combos = [v.all.is_some(), v.any.is_some(), v.not.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    let ops: Vec<&str> = [
        (v.equals.is_some(), "equals"),
        (v.not_equals.is_some(), "not_equals"),
        (v.in_.is_some(), "in"),
        (v.not_in.is_some(), "not_in"),
        (v.matches.is_some(), "matches"),
        (v.exists.is_some(), "exists"),
    ]
    .iter()
    .filter(|(b, _)| *b)
    .map(|(_, n)| *n)
    .collect();
    if combos + usize::from(v.path.is_some()) != 1 {
        c.err(
            &s.referenced,
            format!("a condition needs exactly one of `path:` (with one of {OPS}), `all:`, `any:` or `not:`"),
        );
        return None;
    }
    if let Some(all) = &v.all {
        let cs: Vec<_> = all.iter().map(|x| compile_condition(c, x)).collect();
        return cs
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .map(Condition::All);
    }
    if let Some(any) = &v.any {
        let cs: Vec<_> = any.iter().map(|x| compile_condition(c, x)).collect();
        return cs
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .map(Condition::Any);
    }
    if let Some(not) = &v.not {
        return compile_condition(c, not).map(|x| Condition::Not(Box::new(x)));
    }
    let path_src = v.path.as_ref().expect("checked above");
    if ops.len() != 1 {
        c.err(
            &path_src.referenced,
            format!(
                "a `path:` condition needs exactly one test ({OPS}); found {}",
                if ops.is_empty() {
                    "none".to_string()
                } else {
                    ops.join(", ")
                }
            ),
        );
        return None;
    }
    let path = c.path(path_src)?;
    let value = |c: &mut Ctx, r: &Raw| -> Value {
        match &r.value {
            Value::String(s) => match interpolate(s, c.env) {
                Ok(t) => Value::String(t),
                Err(e) => {
                    c.err(&r.referenced, e);
                    Value::Null
                }
            },
            other => other.clone(),
        }
    };
    let op = if let Some(x) = &v.equals {
        Op::Equals(value(c, x))
    } else if let Some(x) = &v.not_equals {
        Op::NotEquals(value(c, x))
    } else if let Some(x) = &v.in_ {
        Op::In(x.value.clone())
    } else if let Some(x) = &v.not_in {
        Op::NotIn(x.value.clone())
    } else if let Some(x) = &v.matches {
        let t = c.text(x)?;
        match Regex::new(&t) {
            Ok(re) => Op::Matches(re),
            Err(e) => {
                c.err(
                    &x.referenced,
                    format!(
                        "invalid regular expression {t:?}: {}",
                        e.to_string()
                            .lines()
                            .last()
                            .unwrap_or_default()
                            .trim()
                            .trim_start_matches("error: ")
                    ),
                );
                return None;
            }
        }
    } else if let Some(x) = &v.exists {
        Op::Exists(c.bool(&Some(x.clone()), true))
    } else {
        unreachable!("one op present")
    };
    Some(Condition::Test { path, op })
}
