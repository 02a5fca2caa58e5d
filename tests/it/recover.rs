//! `quicstrap recover`: a node's partitions restored at once from peers found in DNS (a real
//! dnsmasq with SRV records), served by real `serve` processes, and caught up from the real
//! broker. A partition no peer holds is built from Kafka alone, a peer that dies mid-way is
//! replaced by another holder, and a rerun after SIGKILL keeps what is valid and resumes the
//! rest.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::dns::{Dnsmasq, DOMAIN};
use crate::kafka::{brokers, content};
use quicstrap::ingest::{self, kafka::KafkaWriter};
use quicstrap::peers::dns::srv_name;
use quicstrap::store::partition::PartitionId;
use serde_json::Value;
use testkit::seed::seed_value;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// A store whose topic has one Kafka partition per store partition, and what each holds.
struct Store {
    name: String,
    writer: KafkaWriter,
    models: Vec<Model>,
    produced: Vec<u64>,
}

impl Store {
    /// A fresh store (its topic created with `partitions` partitions).
    async fn new(tag: &str, partitions: u32) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("rt_{tag}_{}_{nanos}", std::process::id());
        let s = Self {
            writer: KafkaWriter::new(&brokers()).unwrap(),
            models: vec![Model::new(); partitions as usize],
            produced: vec![0; partitions as usize],
            name,
        };
        let topic = ingest::topic(&s.id(0));
        s.writer.create_topic(&topic, partitions).await.unwrap();
        s
    }

    fn id(&self, partition: u32) -> PartitionId {
        PartitionId::new(&self.name, 1, partition).unwrap()
    }

    /// Produces `n` more records of `size` bytes to `partition`.
    async fn produce(&mut self, partition: u32, n: u64, size: usize) {
        let p = partition as usize;
        let batch: Vec<_> = (self.produced[p]..self.produced[p] + n)
            .map(|i| {
                let key = format!("p{partition}-k{i:07}").into_bytes();
                (key, Some(seed_value(i, size)))
            })
            .collect();
        for (k, v) in &batch {
            self.models[p].insert(k.clone(), v.clone().unwrap());
        }
        self.produced[p] += n;
        let topic = ingest::topic(&self.id(partition));
        self.writer
            .send_all(&topic, partition, &batch)
            .await
            .unwrap();
    }

    /// [`Self::produce`] to every partition.
    async fn produce_all(&mut self, n: u64, size: usize) {
        for p in 0..self.produced.len() as u32 {
            self.produce(p, n, size).await;
        }
    }

    /// `quicstrap recover` of `partitions` into `root`; stdout piped for the report lines.
    fn recover(&self, root: &Path, partitions: &str, extra: &[&str]) -> Command {
        let mut cmd =
            testkit::recover_command_in(None, root, &self.name, 1, partitions, &brokers());
        cmd.args([
            "--json",
            "--idle-timeout-secs",
            "3",
            "--connect-timeout-secs",
            "2",
        ])
        .args(extra)
        .stdout(Stdio::piped());
        cmd
    }

    /// [`Self::recover`] with peers from the SRV records of the dnsmasq at `dns_server`.
    fn recover_discovered(&self, root: &Path, partitions: &str, dns_server: &str) -> Command {
        let discover = format!("srv:{DOMAIN}");
        self.recover(
            root,
            partitions,
            &["--discover", &discover, "--dns-server", dns_server],
        )
    }

    /// Every partition in `parts` under `root` holds exactly what was produced to it.
    fn assert_complete(&self, root: &Path, parts: impl IntoIterator<Item = u32>) {
        for p in parts {
            let dir = self.id(p).dir(root);
            assert_eq!(
                content(&dir),
                self.models[p as usize],
                "partition {p} differs"
            );
        }
        assert!(temp_dirs(root).is_empty(), "{:?}", temp_dirs(root));
    }
}

/// A dnsmasq publishing, for each `(partition, port, priority)`, an SRV record of the store's
/// partition on `server.quicstrap.test` (127.0.0.1, the dev server certificate's name).
fn dns(conf: &Path, store: &Store, records: &[(u32, u16, u16)]) -> (Dnsmasq, String) {
    let mut text = format!("local=/{DOMAIN}/\nhost-record=server.quicstrap.test,127.0.0.1\n");
    for (p, port, priority) in records {
        let name = srv_name(&store.id(*p), DOMAIN);
        text.push_str(&format!(
            "srv-host={},server.quicstrap.test,{port},{priority},10\n",
            name.trim_end_matches('.')
        ));
    }
    let path = conf.join("records.conf");
    std::fs::write(&path, text).unwrap();
    let dns = Dnsmasq::start(&path, 1).unwrap();
    let addr = dns.addr.to_string();
    (dns, addr)
}

/// The report lines of a finished recover, by partition number, and its exit code.
fn finish(child: Child) -> (i32, BTreeMap<u32, Value>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        parse_lines(&out.stdout),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn parse_lines(stdout: &[u8]) -> BTreeMap<u32, Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
        .map(|v| {
            let p = v["partition"].as_str().unwrap();
            (p.rsplit('/').next().unwrap().parse().unwrap(), v)
        })
        .collect()
}

/// Node A: `partitions` built from Kafka alone by `recover` (no peer named), then served.
fn source_node(store: &Store, root: &Path, partitions: &str, count: usize) -> ServeProcess {
    let mut cmd = store.recover(root, partitions, &["--lag-threshold", "100"]);
    let (code, lines, stderr) = finish(cmd.stderr(Stdio::piped()).spawn().unwrap());
    assert_eq!(code, 0, "{lines:?} {stderr}");
    assert_eq!(lines.len(), count, "{lines:?}");
    for v in lines.values() {
        assert_eq!(v["path"], "kafka_no_peers", "{v}");
        assert!(v["discovery"].as_str().unwrap().contains("no peers"), "{v}");
    }
    ServeProcess::start(root, &[])
}

/// A serving node holding every partition of a store, published in DNS: what a recovering
/// node discovers. Dropping it stops both.
struct ServingNode {
    _root: tempfile::TempDir,
    _serving: ServeProcess,
    _conf: tempfile::TempDir,
    _dns: Dnsmasq,
    discover: String,
    dns_server: String,
}

impl ServingNode {
    /// `recover` flags that find this node (and skip no transfer for lag).
    fn flags(&self) -> [&str; 6] {
        [
            "--discover",
            &self.discover,
            "--dns-server",
            &self.dns_server,
            "--lag-threshold",
            "100",
        ]
    }
}

/// Partitions `0..count` of `store` built from Kafka on one node, served, and published.
fn one_node_serves_all(store: &Store, count: u32) -> ServingNode {
    let root = tempfile::tempdir().unwrap();
    let range = format!("0-{}", count - 1);
    let serving = source_node(store, root.path(), &range, count as usize);
    let conf = tempfile::tempdir().unwrap();
    let port = serving.addr.port();
    let records: Vec<_> = (0..count).map(|p| (p, port, 0)).collect();
    let (dns, dns_server) = dns(conf.path(), store, &records);
    ServingNode {
        _root: root,
        _serving: serving,
        _conf: conf,
        _dns: dns,
        discover: format!("srv:{DOMAIN}"),
        dns_server,
    }
}

/// The attempts of a partition's report: (peer port, outcome, resumed bytes).
fn attempts(v: &Value) -> Vec<(u16, String, u64)> {
    v["report"]["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let peer = a["peer"].as_str().unwrap();
            let port = peer.rsplit(':').next().unwrap().parse().unwrap();
            (
                port,
                a["outcome"].as_str().unwrap().to_owned(),
                a["resumed_bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_uses_discovered_peers_and_builds_a_partition_no_peer_holds_from_kafka() {
    let _turn = turn(Needs::Broker).await;
    let mut store = Store::new("discover", 4).await;
    store.produce_all(3_000, 500).await;
    let a = tempfile::tempdir().unwrap();
    let serving = source_node(&store, a.path(), "0-3", 4);
    // Records A's snapshots do not hold: B catches them up after each transfer.
    store.produce_all(200, 500).await;
    let conf = tempfile::tempdir().unwrap();
    let port = serving.addr.port();
    let (_dns, server) = dns(
        conf.path(),
        &store,
        &[(0, port, 0), (1, port, 0), (2, port, 0)],
    );

    let b = tempfile::tempdir().unwrap();
    let child = store
        .recover_discovered(b.path(), "0-3", &server)
        .args(["--lag-threshold", "1000"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, lines, stderr) = finish(child);
    assert_eq!(code, 0, "{lines:?} {stderr}");
    assert_eq!(lines.len(), 4, "{lines:?}");
    for p in 0..3 {
        let v = &lines[&p];
        assert_eq!(v["path"], "peer_transfer", "{v}");
        // The name on the certificate checked is the SRV target.
        assert_eq!(
            v["peers"],
            serde_json::json!([format!("server.quicstrap.test@127.0.0.1:{port}")]),
            "{v}"
        );
        assert_eq!(v["report"]["catch_up"]["from_offset"], 2_999, "{v}");
        assert_eq!(v["report"]["catch_up"]["to_offset"], 3_199, "{v}");
        assert_eq!(v["dir"], store.id(p).dir(b.path()).display().to_string());
    }
    let v = &lines[&3];
    assert_eq!(v["path"], "kafka_no_peers", "{v}");
    assert_eq!(v["report"]["catch_up"]["to_offset"], 3_199, "{v}");
    assert!(
        v["discovery"].as_str().unwrap().contains("no peers listed"),
        "{v}"
    );
    assert!(stderr.contains("recovered 4/4 partitions"), "{stderr}");
    store.assert_complete(b.path(), 0..4);

    // `fetch` takes the same discovery; without Kafka, nobody listed is a clear failure.
    let c = tempfile::tempdir().unwrap();
    let discover = format!("srv:{DOMAIN}");
    let dns_flags = ["--discover", &discover, "--dns-server", &server, "--json"];
    let out = output_ok(fetch_command(c.path(), &store.name, 1, 1).args(dns_flags));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["peer"], format!("server.quicstrap.test@127.0.0.1:{port}"));
    let out = fetch_command(c.path(), &store.name, 1, 3)
        .args(dns_flags)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["error_kind"], "no_peers", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_dies_during_recovery_is_replaced_by_another_holder() {
    let _turn = turn(Needs::Broker).await;
    let mut store = Store::new("dies", 4).await;
    store.produce_all(6_000, 1_000).await;
    let a1 = tempfile::tempdir().unwrap();
    let mut first = source_node(&store, a1.path(), "0-3", 4);
    // A second holder of the same partitions, copied while nobody has them open.
    first.stop(Duration::from_secs(10));
    let a2 = tempfile::tempdir().unwrap();
    copy_dir(&a1.path().join(store.id(0).store_version_dir()), a2.path());
    // Slow enough to be caught mid-transfer when it dies (a fast one has pushed everything
    // into B's receive windows long before).
    let first = ServeProcess::start(a1.path(), &["--write-limit", "3000000"]);
    let second = ServeProcess::start(a2.path(), &[]);
    let conf = tempfile::tempdir().unwrap();
    let (p1, p2) = (first.addr.port(), second.addr.port());
    let records: Vec<_> = (0..4).flat_map(|p| [(p, p1, 0), (p, p2, 10)]).collect();
    let (_dns, server) = dns(conf.path(), &store, &records);

    // B asks the first holder first (SRV priority, no shuffle).
    let b = tempfile::tempdir().unwrap();
    let child = store
        .recover_discovered(b.path(), "0-3", &server)
        .args(["--lag-threshold", "1000", "--no-shuffle"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("B receives", Duration::from_secs(60), || {
        received(b.path()) > 2_000_000
    })
    .await;
    first.signal(libc::SIGKILL);
    let (code, lines, stderr) = finish(child);
    assert_eq!(code, 0, "{lines:?} {stderr}");
    assert_eq!(lines.len(), 4);
    let mut replaced = 0;
    for v in lines.values() {
        assert_eq!(v["path"], "peer_transfer", "{v}");
        let tried = attempts(v);
        assert_eq!(tried.last().map(|t| t.1.as_str()), Some("ok"), "{v}");
        if tried[0].0 == p1 && tried[0].1 != "ok" {
            assert_eq!(tried.last().map(|t| t.0), Some(p2), "{v}");
            replaced += 1;
        }
    }
    assert!(
        replaced >= 1,
        "no partition moved from the dead peer: {lines:?}"
    );
    store.assert_complete(b.path(), 0..4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_after_sigkill_keeps_the_valid_partitions_and_resumes_the_rest() {
    let _turn = turn(Needs::Broker).await;
    let mut store = Store::new("rerun", 4).await;
    // Partition 0 is small, so it is done while the others are still coming in.
    store.produce(0, 300, 1_000).await;
    for p in 1..4 {
        store.produce(p, 6_000, 1_000).await;
    }
    let node = one_node_serves_all(&store, 4);
    let flags = node.flags();

    let b = tempfile::tempdir().unwrap();
    let mut child = store
        .recover(b.path(), "0-3", &flags)
        .args(["--read-limit", "2000000"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Partition 0's line, then bytes of the others on disk: the kill lands mid-transfer.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["partition"], store.id(0).to_string(), "{first}");
    assert_eq!(first["ok"], true, "{first}");
    wait_for("the others receive", Duration::from_secs(60), || {
        received(b.path()) > 3_000_000
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(store.id(0).dir(b.path()).join("CURRENT").is_file());
    let kept = received(b.path());

    let child = store
        .recover(b.path(), "0-3", &flags)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, lines, stderr) = finish(child);
    assert_eq!(code, 0, "{lines:?} {stderr}");
    assert_eq!(lines.len(), 4);
    // The valid partition is only caught up from its own offset, nothing transferred.
    assert_eq!(lines[&0]["path"], "local_resume", "{}", lines[&0]);
    assert!(lines[&0]["report"]["transfer"].is_null());
    let mut resumed = 0;
    for p in 1..4 {
        let v = &lines[&p];
        assert_eq!(v["path"], "peer_transfer", "{v}");
        resumed += attempts(v).iter().map(|t| t.2).sum::<u64>();
    }
    assert!(
        resumed > 0 && resumed <= kept,
        "resumed {resumed} of the {kept} bytes kept: {lines:?}"
    );
    store.assert_complete(b.path(), 0..4);
}

/// `recover` run as PID 1 of its own PID namespace (a container), stopped mid-transfer with
/// `signal`, then rerun the same way: the rerun resumes at least 90 % of what had arrived.
async fn recover_as_pid_1_stopped_then_rerun(tag: &str, signal: i32) {
    let _turn = turn(Needs::Broker).await;
    let mut store = Store::new(tag, 3).await;
    store.produce_all(8_000, 1_000).await;
    let node = one_node_serves_all(&store, 3);
    let flags = node.flags();
    let b = tempfile::tempdir().unwrap();
    let mut cmd = store.recover(b.path(), "0-2", &flags);
    cmd.args(["--read-limit", "2000000"]);
    let child = as_pid_1(&cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = pid_1_of(&child).await;
    wait_for("bytes arrive", Duration::from_secs(60), || {
        received(b.path()) > 6_000_000
    })
    .await;
    // SAFETY: signalling a process this test started, not yet reaped (unshare waits for it).
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let (code, lines, stderr) = finish(child);
    if signal == libc::SIGTERM {
        // Suspended: its own exit code and a line that says a rerun resumes.
        assert_eq!(code, 75, "{lines:?} {stderr}");
        assert!(stderr.contains("rerun"), "{stderr}");
        for v in lines.values().filter(|v| v["ok"] == false) {
            assert_eq!(v["error_kind"], "cancelled", "{v}");
        }
    } else {
        assert_ne!(code, 0);
    }
    let kept = received(b.path());
    assert!(kept > 6_000_000, "kept {kept}");
    let left = temp_dirs(b.path());
    assert!(!left.is_empty());
    for d in &left {
        assert!(
            d.join(quicstrap::client::resume::JOURNAL_FILE).is_file(),
            "{d:?}"
        );
    }
    let start = std::time::Instant::now();
    let rerun = as_pid_1(&store.recover(b.path(), "0-2", &flags))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, lines, stderr) = finish(rerun);
    assert_eq!(code, 0, "{lines:?} {stderr}");
    let resumed: u64 = lines
        .values()
        .flat_map(|v| attempts(v).into_iter().map(|t| t.2))
        .sum();
    assert!(
        resumed * 10 >= kept * 9,
        "resumed {resumed} of the {kept} bytes kept: {lines:?}"
    );
    store.assert_complete(b.path(), 0..3);
    let scenario = format!("recover_pid1_{tag}");
    chaos_outcome(&scenario, true, start.elapsed(), 0);
    println!("{scenario}: kept {kept} bytes, resumed {resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_as_pid_1_killed_mid_transfer_resumes_on_rerun() {
    recover_as_pid_1_stopped_then_rerun("sigkill", libc::SIGKILL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_as_pid_1_stopped_with_sigterm_suspends_and_resumes_on_rerun() {
    recover_as_pid_1_stopped_then_rerun("sigterm", libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_recovery_leaves_each_partition_valid_or_suspended_and_nothing_else() {
    use quicstrap::ingest::local::LocalLog;
    use quicstrap::jobs::recover::{
        recover, RecoverConfig, RecoverError, RecoverProgress, Sources,
    };
    use quicstrap::peers::StaticPeers;
    let _turn = turn(Needs::Nothing).await;
    let src = tempfile::tempdir().unwrap();
    let ids: Vec<_> = (70..74).map(id).collect();
    for id in &ids {
        seed(src.path(), id, 20_000, 1_000, 5_000);
    }
    let server = server(src.path(), |_| {}).await;
    // Slow enough that the cancel finds transfers in flight.
    let fetcher = slow_fetcher(5_000_000, |_| {});
    let discovery = StaticPeers(vec![peer(&server)]);
    let sources = Sources {
        fetcher: &fetcher,
        discovery: &discovery,
        // Each partition's log holds nothing after the seeded records (offsets 0..20 000).
        open_log: |_: &PartitionId| Ok(LocalLog::starting_at(20_000)),
    };
    let dst = tempfile::tempdir().unwrap();
    let (progress, cfg) = (RecoverProgress::default(), RecoverConfig::default());
    let mut heard = 0;
    let run = recover(&sources, dst.path(), &ids, &cfg, &progress, |_| heard += 1);
    let cancel = async {
        wait_for("bytes arrive", Duration::from_secs(30), || {
            progress.snapshot().bytes > 4_000_000
        })
        .await;
        progress.cancel();
    };
    let (report, ()) = tokio::join!(run, cancel);
    assert_eq!(report.partitions.len(), 4);
    assert_eq!(heard, 4);
    let mut cancelled = Vec::new();
    for one in &report.partitions {
        match &one.outcome {
            Ok(_) => assert!(one.dir.join("CURRENT").is_file(), "{one:?}"),
            Err(RecoverError::Cancelled) => {
                cancelled.push(one.partition.rsplit('/').next().unwrap().to_owned());
                assert!(!one.dir.exists(), "{one:?}");
            }
            Err(e) => panic!("{}: {e}", one.partition),
        }
    }
    assert!(
        !cancelled.is_empty(),
        "the cancel came too late: {report:?}"
    );
    let counts = progress.snapshot();
    assert_eq!(counts.valid + counts.failed, 4);
    assert_eq!(counts.failed, cancelled.len());
    // What a suspended transfer received is kept for a rerun, journaled; nothing else is.
    for d in temp_dirs(dst.path()) {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        let partition = name
            .strip_prefix(".quicstrap-tmp-")
            .and_then(|r| r.split('-').next())
            .unwrap();
        assert!(cancelled.iter().any(|c| c == partition), "{name}");
        assert!(
            d.join(quicstrap::client::resume::JOURNAL_FILE).is_file(),
            "{name}"
        );
    }
    assert!(open_fds_under(dst.path()).is_empty());

    // Cancelled before it starts: nothing is asked of anybody, Kafka included.
    let early = RecoverProgress::default();
    early.cancel();
    let other = tempfile::tempdir().unwrap();
    let report = recover(&sources, other.path(), &ids, &cfg, &early, |_| {}).await;
    for one in &report.partitions {
        assert!(
            matches!(one.outcome, Err(RecoverError::Cancelled)),
            "{one:?}"
        );
        assert!(!one.dir.exists(), "{one:?}");
    }
    server.shutdown().await;
}
