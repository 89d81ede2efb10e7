//! Counters for every drop, error and answer, so an operator can tell *why* a message went
//! nowhere. Labels are static strings; the hot path takes one short lock per event.

use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    pub fn inc(&self, name: &'static str, label: &'static str) {
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((name, label)).or_insert(0) += 1;
        }
    }

    pub fn get(&self, name: &str, label: &str) -> u64 {
        self.counters.lock().map(|c| c.iter().filter(|((n, l), _)| *n == name && *l == label).map(|(_, v)| *v).sum()).unwrap_or(0)
    }

    /// All counters in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(c) = self.counters.lock() {
            for ((name, label), v) in c.iter() {
                out.push_str(&format!("sixgate_{name}_total{{reason=\"{label}\"}} {v}\n"));
            }
        }
        out
    }
}
