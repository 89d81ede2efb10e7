//! The registration store's commit cost, side by side: the log store (the default), the redb
//! store, and the in-memory store
//! (the floor: the registrar's own work without durability), each committing batches of
//! refreshed bindings into a store already holding 100 000. A batch is what the driver groups
//! while the previous commit runs (1 at light load, tens under heavy load).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sixgate::config::TransportKind;
use sixgate::registrar::store::{BindingStore, LogStore, MemoryStore, RedbStore};
use sixgate::registrar::{Binding, Change, Flow};

const HELD: usize = 100_000;

fn binding(i: usize, round: u32) -> Binding {
    Binding {
        aor: format!("user{i:06}"),
        contact: format!("sip:user{i:06}@[2001:db8:{:x}::10]:5062;transport=udp", i % 65_000),
        q: None,
        expires_at: 1_800_003_600 + u64::from(round),
        registered_at: 1_800_000_000 + u64::from(round),
        call_id: format!("{i:x}-reg@phone"),
        cseq: round,
        instance: None,
        reg_id: None,
        flow: Flow { transport: TransportKind::Udp, local: "[2001:db8::5]:5060".parse().unwrap(), remote: format!("[2001:db8:{:x}::10]:5062", i % 65_000).parse().unwrap() },
        path: vec![],
        nat: None,
        user_agent: Some("Linphone/5.2 (belle-sip/5.2)".into()),
    }
}

fn fill(store: &mut dyn BindingStore) {
    for chunk in (0..HELD).collect::<Vec<_>>().chunks(10_000) {
        let puts: Vec<Change> = chunk.iter().map(|&i| Change::Put(binding(i, 0))).collect();
        store.commit(&puts).unwrap();
    }
}

fn bench_store(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("sixgate-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut redb = RedbStore::open(&dir.join("bindings.redb")).unwrap();
    fill(&mut redb);
    let mut log = LogStore::open(&dir.join("bindings.log")).unwrap();
    fill(&mut log);
    let mut mem = MemoryStore::default();
    fill(&mut mem);
    let mut round = 1u32;
    let mut next = 0usize;
    for batch in [1usize, 16, 256] {
        let mut g = c.benchmark_group(format!("store_commit_batch_{batch}"));
        g.throughput(Throughput::Elements(batch as u64));
        g.sample_size(20);
        let stores: [(&str, &mut dyn BindingStore); 3] = [("log", &mut log), ("redb", &mut redb), ("memory", &mut mem)];
        for (name, store) in stores {
            g.bench_function(name, |b| {
                b.iter_batched(
                    || {
                        round += 1;
                        (0..batch)
                            .map(|_| {
                                next = (next + 7919) % HELD; // spread over the table, as phones are
                                Change::Put(binding(next, round))
                            })
                            .collect::<Vec<_>>()
                    },
                    |changes| store.commit(&changes).unwrap(),
                    BatchSize::SmallInput,
                )
            });
        }
        g.finish();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
