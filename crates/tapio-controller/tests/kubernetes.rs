//! The controller against the stand-in Kubernetes API server (`fake_kube`): pod names on
//! records (owner chains, deleted pods, restarts, relist on 410 Gone, API server down) and
//! `--auth kubernetes` (TokenReview accept/deny, audience, expiry, ServiceAccount, node
//! binding, cache bounds and hit counting).

mod common;
mod fake_kube;

use std::time::Duration;

use common::{batch, heartbeat, hello, TestServer};
use fake_kube::{jwt, mirror, owner_uid, pod, restarted, unix_now, with_owner_uid, FakeKube, TokenFixture};
use serde_json::{json, Value};
use tapio_controller::k8s::metrics::{K8sMetrics, OutcomeLabels};
use tapio_controller::k8s::tokenreview::ReviewSettings;
use tapio_controller::settings::PodWatchSettings;

const CID_WEB: &str = "3f1c0a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddee";
const CID_SIDECAR: &str = "aa1c0a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdd01";
const CID_DB: &str = "bb1c0a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdd02";
const CID_JOB: &str = "cc1c0a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdd03";
const CID_DS: &str = "dd1c0a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdd04";
const UID_WEB: &str = "5b2a3c1e-8d4f-4a6b-9c0d-1e2f3a4b5c6d";
const UID_DB: &str = "6c3b4d2f-9e5a-4b7c-8d1e-2f3a4b5c6d7e";
const UID_JOB: &str = "7d4c5e3a-0f6b-4c8d-9e2f-3a4b5c6d7e8f";
const UID_DS: &str = "8e5d6f4b-1a7c-4d9e-8f3a-4b5c6d7e8f90";

fn ev(pod_uid: Option<&str>, container_id: Option<&str>) -> Value {
    json!({"type": "kernel.container.oom_kill", "observer": "container", "severity": "critical",
        "timestamp_unix_nanos": 1_763_700_000_000_000_000u64,
        "workload": {"cgroup_id": 4242, "pod_uid": pod_uid, "container_id": container_id},
        "facts": {"pid": 77, "comm": "java"}})
}

/// `record` as one of `node`'s records (its own `node`, not the batch's).
fn on_node(mut record: Value, node: &str) -> Value {
    record["node"] = json!(node);
    record
}

/// A cluster shaped like a real one: a Deployment's pod (two containers), a
/// StatefulSet's, a CronJob's Job's, a DaemonSet's.
fn seed(api: &FakeKube) {
    api.put_replicaset("shop", "web-6d4b9c7f5d", Some("web"));
    api.put_job("batch", "nightly-29381520", Some("nightly"));
    api.put_pod(pod(
        "shop",
        "web-6d4b9c7f5d-x2x7q",
        UID_WEB,
        "node-a1",
        &[("app", CID_WEB), ("envoy", CID_SIDECAR)],
        Some(("ReplicaSet", "web-6d4b9c7f5d")),
    ));
    api.put_pod(pod("shop", "db-0", UID_DB, "node-b", &[("postgres", CID_DB)], Some(("StatefulSet", "db"))));
    api.put_pod(pod(
        "batch",
        "nightly-29381520-k9p2z",
        UID_JOB,
        "node-a1",
        &[("report", CID_JOB)],
        Some(("Job", "nightly-29381520")),
    ));
    api.put_pod(pod(
        "kube-system",
        "fluentd-7xk2p",
        UID_DS,
        "node-a1",
        &[("fluentd", CID_DS)],
        Some(("DaemonSet", "fluentd")),
    ));
}

async fn enriching_controller(tag: &str, api_url: String, grace: Duration) -> TestServer {
    enriching_controller_of(tag, api_url, grace, 1_000).await
}

async fn enriching_controller_of(tag: &str, api_url: String, grace: Duration, max_pods: usize) -> TestServer {
    TestServer::start_with(tag, |s| {
        s.k8s_api_server = Some(api_url);
        s.pod_watch = Some(PodWatchSettings { max_pods, deleted_grace: grace, owner_cache_entries: 100 });
    })
    .await
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn enrichment(t: &TestServer, result: &'static str) -> u64 {
    t.server.state.metrics.k8s.enrichment.get_or_create(&OutcomeLabels { result }).get()
}

async fn send(t: &TestServer, seq: u64, events: Vec<Value>) -> Vec<Value> {
    let before = common::read_lines(&t.sink_path).len();
    let r = t.client().post_json("/v1/events", &batch("a1", seq, events.clone())).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let lines = t.sink_lines(before + events.len()).await;
    assert_eq!(lines.len(), before + events.len());
    lines[before..].to_vec()
}

#[tokio::test]
async fn records_gain_pod_container_node_and_owner_names() {
    let api = FakeKube::start().await;
    seed(&api);
    let t = enriching_controller("k8s-enrich", api.url(), Duration::from_secs(300)).await;
    let m = &t.server.state.metrics.k8s;
    wait_for("the first pod list", || m.synced.get() == 1).await;

    let out = send(
        &t,
        1,
        vec![
            ev(Some(UID_WEB), Some(CID_SIDECAR)),
            // The database pod runs on node-b: a record of that node's (its `node`).
            on_node(ev(Some(UID_DB), Some(CID_DB)), "node-b"),
            ev(Some(UID_JOB), Some(CID_JOB)),
            ev(Some(UID_DS), Some(CID_DS)),
            ev(Some("0f0f0f0f-0000-4000-8000-000000000000"), None),
            ev(None, None),
            // The same pod in a record of node-a1's: not a pod that node runs, not named.
            ev(Some(UID_DB), Some(CID_DB)),
        ],
    )
    .await;
    assert_eq!(
        out[0]["k8s"],
        json!({"k8s.namespace.name": "shop", "k8s.pod.name": "web-6d4b9c7f5d-x2x7q", "k8s.pod.uid": UID_WEB,
            "k8s.container.name": "envoy", "k8s.node.name": "node-a1",
            "k8s.replicaset.name": "web-6d4b9c7f5d", "k8s.deployment.name": "web"})
    );
    assert_eq!(out[1]["k8s"]["k8s.statefulset.name"], "db");
    assert_eq!(out[1]["k8s"]["k8s.container.name"], "postgres");
    assert_eq!(out[1]["k8s"]["k8s.node.name"], "node-b");
    assert_eq!(out[2]["k8s"]["k8s.job.name"], "nightly-29381520");
    assert_eq!(out[2]["k8s"]["k8s.cronjob.name"], "nightly");
    assert_eq!(out[3]["k8s"]["k8s.daemonset.name"], "fluentd");
    assert_eq!(out[3]["k8s"]["k8s.namespace.name"], "kube-system");
    // Unknown pod and no pod: passed through as sent, with the facts and workload intact.
    for rec in &out[4..] {
        assert!(rec.get("k8s").is_none(), "{rec}");
        assert_eq!(rec["facts"]["comm"], "java");
        assert_eq!(rec["workload"]["cgroup_id"], 4242);
    }
    assert_eq!(enrichment(&t, "enriched"), 4);
    assert_eq!(enrichment(&t, "pod_unknown"), 1);
    assert_eq!(enrichment(&t, "no_pod_uid"), 1);
    assert_eq!(enrichment(&t, "pod_on_other_node"), 1);
    // One GET per owner that has a parent, cached afterwards.
    assert_eq!(api.owner_gets(), 2);
    let text = t.client().get("/metrics").await;
    let text = String::from_utf8(text.body).unwrap();
    assert!(text.contains("tapio_controller_k8s_enrichment_total{result=\"pod_unknown\"} 1"), "{text}");
    assert!(text.contains("tapio_controller_k8s_pods_live 4"), "{text}");
    t.stop().await;
}

#[tokio::test]
async fn a_pod_deleted_before_its_evidence_arrives_is_still_named_and_restarts_keep_the_old_container() {
    let api = FakeKube::start().await;
    seed(&api);
    let t = enriching_controller("k8s-deleted", api.url(), Duration::from_secs(300)).await;
    let m = &t.server.state.metrics.k8s;
    wait_for("the first pod list", || m.synced.get() == 1).await;

    // The container is OOM-killed and restarted: the kubelet reports a new id and keeps
    // the old one in lastState; evidence about the killed instance names the old id.
    let web = pod(
        "shop",
        "web-6d4b9c7f5d-x2x7q",
        UID_WEB,
        "node-a1",
        &[("app", CID_WEB), ("envoy", CID_SIDECAR)],
        Some(("ReplicaSet", "web-6d4b9c7f5d")),
    );
    let new_id = "ee1c0a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdd05";
    api.put_pod(restarted(web, "app", new_id));
    wait_for("the restart", || m.watch_events.get_or_create(&OutcomeLabels { result: "apply" }).get() >= 1).await;
    // Then the pod is deleted, before the agent's batch arrives.
    api.delete_pod(UID_WEB);
    wait_for("the delete", || m.watch_events.get_or_create(&OutcomeLabels { result: "delete" }).get() == 1).await;

    let out = send(&t, 1, vec![ev(Some(UID_WEB), Some(CID_WEB)), ev(Some(UID_WEB), Some(new_id))]).await;
    assert_eq!(out[0]["k8s"]["k8s.pod.name"], "web-6d4b9c7f5d-x2x7q");
    assert_eq!(out[0]["k8s"]["k8s.container.name"], "app", "old container id still named");
    assert_eq!(out[1]["k8s"]["k8s.container.name"], "app", "new container id named");
    assert_eq!(out[0]["k8s"]["k8s.deployment.name"], "web");
    assert_eq!(enrichment(&t, "enriched_deleted_pod"), 2);
    t.stop().await;
}

#[tokio::test]
async fn deleted_pods_are_forgotten_after_the_grace_period() {
    let api = FakeKube::start().await;
    seed(&api);
    let t = enriching_controller("k8s-grace", api.url(), Duration::from_secs(1)).await;
    let m = &t.server.state.metrics.k8s;
    wait_for("the first pod list", || m.synced.get() == 1).await;
    api.delete_pod(UID_DB);
    wait_for("the delete", || m.watch_events.get_or_create(&OutcomeLabels { result: "delete" }).get() == 1).await;
    // The store sweeps every 5 s; the grace period is 1 s.
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    let out = send(&t, 1, vec![ev(Some(UID_DB), Some(CID_DB))]).await;
    assert!(out[0].get("k8s").is_none(), "{}", out[0]);
    assert_eq!(enrichment(&t, "pod_unknown"), 1);
    assert_eq!(m.pods_live.get(), 3);
    t.stop().await;
}

/// While the watch is down, the DaemonSet's pod goes, a pod comes (`db-1`, its UID
/// returned), and the history is compacted: resuming from the last version seen gets 410
/// Gone, so the controller must relist. Returns once the relist is done.
async fn a_pod_goes_and_one_comes_while_the_watch_is_down(api: &FakeKube, m: &K8sMetrics) -> &'static str {
    api.close_watches();
    api.delete_pod(UID_DS);
    let late = "9f6e7a5c-2b8d-4e0f-9a4b-5c6d7e8f9012";
    api.put_pod(pod("shop", "db-1", late, "node-a1", &[("postgres", CID_JOB)], Some(("StatefulSet", "db"))));
    api.compact();
    wait_for("a relist", || m.lists.get() >= 2).await;
    late
}

#[tokio::test]
async fn a_watch_that_gets_410_gone_relists_and_catches_up() {
    let api = FakeKube::start().await;
    seed(&api);
    let t = enriching_controller("k8s-410", api.url(), Duration::from_secs(300)).await;
    let m = &t.server.state.metrics.k8s;
    wait_for("the first pod list", || m.synced.get() == 1).await;
    assert_eq!(m.lists.get(), 1);
    // The watch asked for bookmarks and got them (the stand-in sends one every 500 ms).
    wait_for("a bookmark", || api.bookmarks() >= 1).await;

    let late = a_pod_goes_and_one_comes_while_the_watch_is_down(&api, m).await;
    assert!(api.lists() >= 2);
    assert!(m.watch_errors.get() >= 1, "the 410 is counted");

    let out = send(&t, 1, vec![ev(Some(late), Some(CID_JOB)), ev(Some(UID_DS), None)]).await;
    assert_eq!(out[0]["k8s"]["k8s.pod.name"], "db-1");
    // Gone from the relist: kept as deleted for the grace period.
    assert_eq!(out[1]["k8s"]["k8s.pod.name"], "fluentd-7xk2p");
    assert_eq!(enrichment(&t, "enriched_deleted_pod"), 1);
    t.stop().await;
}

/// A full store (`--k8s-max-pods` 4, the four seeded pods): a pod that came while the watch
/// was down does not fit during the relist, which still holds the pod that went; it is set
/// aside, and stored in that pod's place once the relist ends and the gone pod counts as
/// deleted. Nothing is dropped; the deleted pod's early end is counted.
#[tokio::test]
async fn a_pod_that_does_not_fit_during_a_relist_is_stored_in_the_place_of_one_that_went() {
    let api = FakeKube::start().await;
    seed(&api);
    let t = enriching_controller_of("k8s-full-relist", api.url(), Duration::from_secs(300), 4).await;
    let m = &t.server.state.metrics.k8s;
    wait_for("the first pod list", || m.synced.get() == 1).await;
    let late = a_pod_goes_and_one_comes_while_the_watch_is_down(&api, m).await;

    let out = send(&t, 1, vec![ev(Some(late), Some(CID_JOB)), ev(Some(UID_DS), None), ev(Some(UID_WEB), None)]).await;
    assert_eq!(out[0]["k8s"]["k8s.pod.name"], "db-1", "the pod that came is named");
    assert!(out[1].get("k8s").is_none(), "the pod that went made room: {}", out[1]);
    assert_eq!(out[2]["k8s"]["k8s.pod.name"], "web-6d4b9c7f5d-x2x7q");
    assert_eq!((m.pods_dropped.get(), m.pods_displaced.get()), (0, 1));
    assert_eq!(m.pods_live.get(), 4);
    t.stop().await;
}

#[tokio::test]
async fn with_the_api_server_down_ingest_goes_on_and_records_pass_through_counted() {
    let api = FakeKube::start().await;
    let url = api.url();
    api.stop();
    drop(api);
    let t = enriching_controller("k8s-down", url, Duration::from_secs(300)).await;
    let m = &t.server.state.metrics.k8s;
    let started = std::time::Instant::now();
    let out = send(&t, 1, vec![ev(Some(UID_WEB), Some(CID_WEB))]).await;
    assert!(started.elapsed() < Duration::from_secs(5), "ingest did not wait for the API server");
    assert!(out[0].get("k8s").is_none());
    assert_eq!(enrichment(&t, "not_synced"), 1);
    wait_for("a counted watch error", || m.watch_errors.get() >= 1).await;
    assert_eq!(m.synced.get(), 0);
    t.stop().await;
}

/// A StatefulSet's pod is deleted and made again under its name, with a new UID and a new
/// container: each pod's records are named after their own pod (by UID), the old one's
/// late ones as a deleted pod's, and neither takes the other's container.
#[tokio::test]
async fn a_pod_made_again_under_its_name_names_only_its_own_records() {
    let api = FakeKube::start().await;
    seed(&api);
    let t = enriching_controller("k8s-same-name", api.url(), Duration::from_secs(300)).await;
    let m = &t.server.state.metrics.k8s;
    wait_for("the first pod list", || m.synced.get() == 1).await;
    api.delete_pod(UID_DB);
    let (new_uid, new_cid) =
        ("5a6b7c8d-0000-4000-8000-00000000ffff", "fa1c0a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdd09");
    api.put_pod(pod("shop", "db-0", new_uid, "node-b", &[("postgres", new_cid)], Some(("StatefulSet", "db"))));
    wait_for("the new pod", || m.watch_events.get_or_create(&OutcomeLabels { result: "apply" }).get() == 1).await;

    let out = send(
        &t,
        1,
        vec![
            on_node(ev(Some(UID_DB), Some(CID_DB)), "node-b"),
            on_node(ev(Some(new_uid), Some(new_cid)), "node-b"),
            on_node(ev(Some(new_uid), Some(CID_DB)), "node-b"),
        ],
    )
    .await;
    assert_eq!(
        (out[0]["k8s"]["k8s.pod.uid"].as_str(), out[1]["k8s"]["k8s.pod.uid"].as_str()),
        (Some(UID_DB), Some(new_uid))
    );
    assert_eq!(out[0]["k8s"]["k8s.container.name"], "postgres");
    assert_eq!(out[1]["k8s"]["k8s.container.name"], "postgres");
    assert!(out[2]["k8s"].get("k8s.container.name").is_none(), "the old pod's container is not the new one's");
    assert_eq!((enrichment(&t, "enriched"), enrichment(&t, "enriched_deleted_pod")), (2, 1));
    assert_eq!(m.container_unknown.get(), 1);
    t.stop().await;
}

/// A ReplicaSet deleted and made again under the same name (`kubectl replace --force`, a
/// GitOps re-creation) belongs to another Deployment. A pod of the new one is named after
/// the new Deployment, not the one cached for the old ReplicaSet's name; a pod that still
/// names the old ReplicaSet (by its UID) is not named after the new one's Deployment
/// (counted), and keeps the ReplicaSet it names itself.
#[tokio::test]
async fn a_replicaset_made_again_under_the_same_name_is_not_named_after_the_old_ones_deployment() {
    let api = FakeKube::start().await;
    seed(&api);
    let t = enriching_controller("k8s-owner-uid", api.url(), Duration::from_secs(300)).await;
    let m = &t.server.state.metrics.k8s;
    wait_for("the first pod list", || m.synced.get() == 1).await;
    let lookups = |result: &'static str| m.owner_lookups.get_or_create(&OutcomeLabels { result }).get();
    assert_eq!(lookups("miss"), 2, "web-6d4b9c7f5d → web is cached, and nightly's Job");

    let rs = "web-6d4b9c7f5d";
    let (new_rs_uid, new_pod, stale_pod) = (
        "0a7b6c5d-0000-4000-8000-00000000aaaa",
        "1e2d3c4b-0000-4000-8000-00000000bbbb",
        "2f3e4d5c-0000-4000-8000-00000000cccc",
    );
    api.put_replicaset_with_uid("shop", rs, new_rs_uid, Some("web-canary"));
    let cid_new = "ab1c0a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdd06";
    let cid_stale = "ac1c0a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdd07";
    api.put_pod(with_owner_uid(
        pod("shop", "web-6d4b9c7f5d-n3w00", new_pod, "node-a1", &[("app", cid_new)], Some(("ReplicaSet", rs))),
        new_rs_uid,
    ));
    // Owned by a third ReplicaSet of that name, already gone: the API server's is not it.
    api.put_pod(with_owner_uid(
        pod("shop", "web-6d4b9c7f5d-01d00", stale_pod, "node-a1", &[("app", cid_stale)], Some(("ReplicaSet", rs))),
        "3a4b5c6d-0000-4000-8000-00000000dddd",
    ));
    wait_for("both pods", || m.watch_events.get_or_create(&OutcomeLabels { result: "apply" }).get() >= 2).await;

    let out = send(
        &t,
        1,
        vec![ev(Some(new_pod), Some(cid_new)), ev(Some(stale_pod), Some(cid_stale)), ev(Some(UID_WEB), Some(CID_WEB))],
    )
    .await;
    assert_eq!(out[0]["k8s"]["k8s.replicaset.name"], rs);
    assert_eq!(out[0]["k8s"]["k8s.deployment.name"], "web-canary", "{}", out[0]);
    assert_eq!(out[1]["k8s"]["k8s.pod.name"], "web-6d4b9c7f5d-01d00");
    assert_eq!(out[1]["k8s"]["k8s.replicaset.name"], rs);
    assert!(out[1]["k8s"].get("k8s.deployment.name").is_none(), "{}", out[1]);
    // The first pod's ReplicaSet (its UID) is still the one cached: named as before.
    assert_eq!(out[2]["k8s"]["k8s.deployment.name"], "web");
    assert_eq!(lookups("uid_mismatch"), 1);
    assert_eq!(lookups("miss"), 3, "the new ReplicaSet was looked up, the mismatch not cached");
    assert_eq!(owner_uid(rs), "uid-web-6d4b9c7f5d", "the seeded pod's reference");
    t.stop().await;
}

/// A static pod's records carry the UID the kubelet gave it, which its mirror pod names in
/// an annotation. A second pod claiming that UID the same way (its node as owner too) makes
/// the records ambiguous: named after neither while both exist (counted), and after the
/// mirror again once the other is deleted. Its deletion does not end the mirror.
#[tokio::test]
async fn a_static_pods_uid_claimed_by_two_pods_is_named_after_neither_until_one_is_left() {
    let api = FakeKube::start().await;
    let static_uid = "6b3ec1f8c2a54f0e9a7d8b2c4e6f1a3d";
    let (mirror_uid, copycat_uid) = ("0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", "4d5e6f70-0000-4000-8000-00000000eeee");
    let cid = "ef1c0a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdd08";
    api.put_pod(mirror(pod("kube-system", "etcd-node-a1", mirror_uid, "node-a1", &[("etcd", cid)], None), static_uid));
    let t = enriching_controller("k8s-uid-conflict", api.url(), Duration::from_secs(300)).await;
    let m = &t.server.state.metrics.k8s;
    wait_for("the first pod list", || m.synced.get() == 1).await;
    let out = send(&t, 1, vec![ev(Some(static_uid), Some(cid))]).await;
    assert_eq!(out[0]["k8s"]["k8s.pod.name"], "etcd-node-a1");
    assert_eq!(out[0]["k8s"]["k8s.pod.uid"], mirror_uid);

    api.put_pod(mirror(pod("default", "not-etcd", copycat_uid, "node-a1", &[("etcd", cid)], None), static_uid));
    wait_for("the conflict", || m.pod_uid_conflicts.get() == 1).await;
    let out = send(&t, 2, vec![ev(Some(static_uid), Some(cid))]).await;
    assert!(out[0].get("k8s").is_none(), "{}", out[0]);
    assert_eq!(out[0]["workload"]["pod_uid"], static_uid, "passed on as the agent knew it");
    assert_eq!(enrichment(&t, "pod_uid_conflict"), 1);

    api.delete_pod(copycat_uid);
    wait_for("the delete", || m.watch_events.get_or_create(&OutcomeLabels { result: "delete" }).get() == 1).await;
    let out = send(&t, 3, vec![ev(Some(static_uid), Some(cid))]).await;
    assert_eq!(out[0]["k8s"]["k8s.pod.name"], "etcd-node-a1", "{}", out[0]);
    assert_eq!(enrichment(&t, "enriched"), 2);
    assert_eq!(m.pods_live.get(), 1);
    t.stop().await;
}

// ---- --auth kubernetes ----

const SA: &str = "system:serviceaccount:tapio-system:tapio-agent";

fn fixture(node: Option<&str>) -> TokenFixture {
    TokenFixture {
        username: SA.into(),
        audiences: vec!["tapio".into()],
        exp: unix_now() + 3_600,
        node: node.map(str::to_string),
        pod_uid: Some("a9e8d7c6-0000-4000-8000-000000000001".into()),
    }
}

async fn authenticating_controller(tag: &str, api: &FakeKube, entries: usize, pods: bool) -> TestServer {
    let url = api.url();
    TestServer::start_with(tag, |s| {
        s.k8s_api_server = Some(url);
        s.kubernetes_auth = Some(ReviewSettings {
            audience: "tapio".into(),
            service_account: "tapio-system:tapio-agent".into(),
            cache_ttl: Duration::from_secs(300),
            cache_entries: entries,
        });
        if pods {
            s.pod_watch = Some(PodWatchSettings {
                max_pods: 100,
                deleted_grace: Duration::from_secs(60),
                owner_cache_entries: 10,
            });
        }
    })
    .await
}

/// `v` sent under its node's name, as a node-bound agent must: agent "a1" on "node-a1"
/// becomes agent "node-a1".
fn own(mut v: Value) -> Value {
    v["agent_id"] = v["node_name"].clone();
    v
}

fn reviews(t: &TestServer, result: &'static str) -> u64 {
    t.server.state.metrics.k8s.token_reviews.get_or_create(&OutcomeLabels { result }).get()
}

#[tokio::test]
async fn token_review_accepts_the_agent_for_its_own_node_only() {
    let api = FakeKube::start().await;
    let good = jwt("good", unix_now() + 3_600);
    api.put_token(&good, fixture(Some("node-a1")));
    let t = authenticating_controller("k8s-auth-node", &api, 100, false).await;
    let c = t.client().with_header("Authorization", &format!("Bearer {good}"));

    assert_eq!(c.post_json("/v1/agents/hello", &own(hello("a1"))).await.status, 200);
    assert_eq!(c.post_json("/v1/agents/heartbeat", &own(heartbeat("a1"))).await.status, 200);
    assert_eq!(c.get("/v1/agents/config?agent_id=node-a1&node_name=node-a1").await.status, 200);
    let r = c.post_json("/v1/events", &own(batch("a1", 1, vec![ev(None, None)]))).await;
    assert_eq!(r.status, 200);

    // The same token reporting for another node: 403 with the envelope, nothing stored.
    let r = c.post_json("/v1/agents/hello", &hello("b2")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "FORBIDDEN");
    let r = c.post_json("/v1/events", &batch("b2", 1, vec![ev(None, None)])).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "FORBIDDEN"));
    let r = c.get("/v1/agents/config?agent_id=node-a1&node_name=node-b2").await;
    assert_eq!(r.status, 403);
    // A batch for its own node whose records claim another node.
    let mut foreign = ev(None, None);
    foreign["node"] = json!("node-b2");
    let r = c.post_json("/v1/events", &own(batch("a1", 2, vec![foreign]))).await;
    assert_eq!(r.status, 403);
    assert_eq!(t.sink_lines(1).await.len(), 1);
    assert_eq!(reviews(&t, "wrong_node"), 4);

    // One TokenReview for everything above: the rest came from the cache.
    assert_eq!(api.reviews(), 1);
    let m = &t.server.state.metrics.k8s;
    assert_eq!(m.token_cache_misses.get(), 1);
    assert_eq!(m.token_cache_hits.get(), 7);
    t.stop().await;
}

/// Under node binding an agent's id is its node's name. Node b2's token cannot take node
/// a1's id, not even before a1's agent has said hello (after a controller restart or an
/// eviction, which used to let it squat the id and lock a1's agent out with 403 for good),
/// and cannot invent ids to fill the registry's slots. Every operation is refused with 403
/// and nothing is stored or registered.
#[tokio::test]
async fn a_node_bound_agent_id_must_be_its_node_name_so_no_token_squats_another_nodes_id() {
    let api = FakeKube::start().await;
    let (token_a, token_b) = (jwt("a", unix_now() + 3_600), jwt("b", unix_now() + 3_600));
    api.put_token(&token_a, fixture(Some("node-a1")));
    api.put_token(&token_b, fixture(Some("node-b2")));
    let t = authenticating_controller("k8s-auth-agent", &api, 100, false).await;
    let a = t.client().with_header("Authorization", &format!("Bearer {token_a}"));
    let b = t.client().with_header("Authorization", &format!("Bearer {token_b}"));

    // b2's token, first to claim node-a1's id (reporting its own node): refused everywhere.
    let squat = |mut v: Value| {
        v["agent_id"] = json!("node-a1");
        v["node_name"] = json!("node-b2");
        v
    };
    let forbidden = |r: &common::Resp, what: &str| {
        assert_eq!((r.status, r.error_code().as_str()), (403, "FORBIDDEN"), "{what}");
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("agent_id must be that node's name"), "{what}: {message}");
    };
    forbidden(&b.post_json("/v1/agents/hello", &squat(hello("x"))).await, "hello");
    forbidden(&b.post_json("/v1/agents/heartbeat", &squat(heartbeat("x"))).await, "heartbeat");
    forbidden(&b.get("/v1/agents/config?agent_id=node-a1&node_name=node-b2").await, "config");
    forbidden(&b.post_json("/v1/events", &squat(batch("x", 1, vec![ev(None, None)]))).await, "events");
    assert_eq!(t.server.state.registry.node_of("node-a1"), None, "the id was not taken");

    // The real agent of node-a1 says hello, heartbeats and sends evidence as usual.
    assert_eq!(a.post_json("/v1/agents/hello", &own(hello("a1"))).await.status, 200);
    assert_eq!(a.post_json("/v1/agents/heartbeat", &own(heartbeat("a1"))).await.status, 200);
    assert_eq!(a.post_json("/v1/events", &own(batch("a1", 1, vec![ev(None, None)]))).await.status, 200);

    // Invented ids from b2's token (its own node) cannot fill the registry either.
    for i in 0..5 {
        let mut v = own(hello("b2"));
        v["agent_id"] = json!(format!("invented-{i}"));
        forbidden(&b.post_json("/v1/agents/hello", &v).await, "an invented id");
        let mut v = own(batch("b2", 1, vec![ev(None, None)]));
        v["agent_id"] = json!(format!("invented-{i}"));
        forbidden(&b.post_json("/v1/events", &v).await, "an invented id's batch");
    }
    // b2's own name is fine.
    assert_eq!(b.post_json("/v1/agents/hello", &own(hello("b2"))).await.status, 200);

    let census = t.server.state.registry.census(std::time::Instant::now(), Duration::from_secs(30), "");
    assert_eq!((census.registered, census.unregistered), (2, 0));
    assert_eq!(t.sink_lines(1).await.len(), 1, "only node-a1's evidence");
    assert_eq!(reviews(&t, "wrong_agent"), 14);
    assert_eq!(reviews(&t, "wrong_node"), 0);
    t.stop().await;
}

/// The config query is percent-decoded only: `?agent_id=a+b` names the agent `a+b` (form
/// decoding made it `a b`, which a token bound to node `a+b` may not report as).
#[tokio::test]
async fn a_plus_in_the_config_query_is_a_plus() {
    let api = FakeKube::start().await;
    let token = jwt("plus", unix_now() + 3_600);
    api.put_token(&token, fixture(Some("a+b")));
    let t = authenticating_controller("k8s-auth-plus", &api, 100, false).await;
    let c = t.client().with_header("Authorization", &format!("Bearer {token}"));
    assert_eq!(c.get("/v1/agents/config?agent_id=a+b&node_name=a%2Bb").await.status, 200);
    let r = c.get("/v1/agents/config?agent_id=a%20b&node_name=a+b").await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "FORBIDDEN"), "`a b` is another agent");
    t.stop().await;
}

/// Without node binding (one shared token) agent ids are the agents' own choice.
#[tokio::test]
async fn with_a_shared_token_any_agent_id_is_accepted() {
    let t = TestServer::start_with("k8s-shared-ids", |s| {
        s.auth_token = Some(tapio_controller::auth::BearerToken::new("shared".into()));
    })
    .await;
    assert_eq!(t.client().post_json("/v1/agents/hello", &hello("a1")).await.status, 401, "auth is on");
    let c = t.client().with_header("Authorization", "Bearer shared");
    for id in ["a1", "node-a1", "whatever"] {
        let mut v = hello(id);
        v["node_name"] = json!("node-a1");
        assert_eq!(c.post_json("/v1/agents/hello", &v).await.status, 200, "{id}");
        assert_eq!(c.post_json("/v1/events", &batch(id, 1, vec![ev(None, None)])).await.status, 200, "{id}");
    }
    t.stop().await;
}

#[tokio::test]
async fn token_review_refuses_unknown_expired_wrong_audience_and_wrong_service_account() {
    let api = FakeKube::start().await;
    let now = unix_now();
    let unknown = jwt("unknown", now + 3_600);
    let expired = jwt("expired", now - 10);
    api.put_token(&expired, TokenFixture { exp: now - 10, ..fixture(Some("node-a1")) });
    let other_audience = jwt("aud", now + 3_600);
    api.put_token(
        &other_audience,
        TokenFixture { audiences: vec!["https://kubernetes.default.svc".into()], ..fixture(Some("node-a1")) },
    );
    let other_sa = jwt("sa", now + 3_600);
    api.put_token(
        &other_sa,
        TokenFixture { username: "system:serviceaccount:default:default".into(), ..fixture(Some("node-a1")) },
    );
    let unbound = jwt("unbound", now + 3_600);
    api.put_token(&unbound, TokenFixture { pod_uid: None, ..fixture(None) });
    let t = authenticating_controller("k8s-auth-deny", &api, 100, false).await;

    for (token, status, code) in [
        (unknown.as_str(), 401, "UNAUTHENTICATED"),
        (expired.as_str(), 401, "UNAUTHENTICATED"),
        (other_audience.as_str(), 401, "UNAUTHENTICATED"),
        (other_sa.as_str(), 403, "FORBIDDEN"),
        (unbound.as_str(), 403, "FORBIDDEN"),
    ] {
        let c = t.client().with_header("Authorization", &format!("Bearer {token}"));
        let r = c.post_json("/v1/agents/hello", &hello("a1")).await;
        assert_eq!((r.status, r.error_code().as_str()), (status, code), "{:?}", String::from_utf8_lossy(&r.body));
        // The token never appears in the answer.
        assert!(!String::from_utf8_lossy(&r.body).contains(token));
    }
    let r = t.client().post_json("/v1/agents/hello", &hello("a1")).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "UNAUTHENTICATED"));
    // Denials are not cached: asking again asks the API server again.
    let c = t.client().with_header("Authorization", &format!("Bearer {unknown}"));
    assert_eq!(c.post_json("/v1/agents/hello", &hello("a1")).await.status, 401);
    assert_eq!(api.reviews(), 6);
    assert_eq!(reviews(&t, "denied"), 4, "unknown twice, expired, other audience");
    assert_eq!(reviews(&t, "wrong_service_account"), 1);
    assert_eq!(reviews(&t, "no_node"), 1);
    assert_eq!(reviews(&t, "accepted"), 0);
    t.stop().await;
}

#[tokio::test]
async fn a_token_bound_only_to_a_pod_is_bound_to_that_pods_node() {
    for with_pod_store in [true, false] {
        let api = FakeKube::start().await;
        let agent_pod = "a9e8d7c6-0000-4000-8000-000000000001";
        api.put_pod(pod(
            "tapio-system",
            "tapio-agent-x",
            agent_pod,
            "node-a1",
            &[("agent", CID_DS)],
            Some(("DaemonSet", "tapio-agent")),
        ));
        let token = jwt("podbound", unix_now() + 3_600);
        api.put_token(&token, fixture(None));
        // The bound pod was replaced by a newer one of the same name: not this token's.
        let stale = jwt("stale", unix_now() + 3_600);
        api.put_token(
            &stale,
            TokenFixture { pod_uid: Some("a9e8d7c6-0000-4000-8000-0000000000ff".into()), ..fixture(None) },
        );
        let t = authenticating_controller("k8s-auth-pod", &api, 100, with_pod_store).await;
        if with_pod_store {
            let m = &t.server.state.metrics.k8s;
            wait_for("the first pod list", || m.synced.get() == 1).await;
        }
        let c = t.client().with_header("Authorization", &format!("Bearer {token}"));
        assert_eq!(c.post_json("/v1/agents/hello", &own(hello("a1"))).await.status, 200, "store {with_pod_store}");
        assert_eq!(c.post_json("/v1/agents/hello", &hello("b2")).await.status, 403);
        let c = t.client().with_header("Authorization", &format!("Bearer {stale}"));
        let r = c.post_json("/v1/agents/hello", &own(hello("a1"))).await;
        assert_eq!((r.status, r.error_code().as_str()), (403, "FORBIDDEN"), "store {with_pod_store}");
        // Without the store the node came from a GET of the pod, which the chart must allow.
        assert_eq!(api.forbidden(), 0, "store {with_pod_store}: a call the chart's ClusterRole does not grant");
        t.stop().await;
    }
}

#[tokio::test]
async fn the_cache_is_bounded_never_outlives_the_token_and_rotation_needs_no_restart() {
    let api = FakeKube::start().await;
    let now = unix_now();
    let tokens: Vec<String> = (0..3).map(|i| jwt(&format!("t{i}"), now + 3_600)).collect();
    for tok in &tokens {
        api.put_token(tok, fixture(Some("node-a1")));
    }
    let t = authenticating_controller("k8s-auth-cache", &api, 2, false).await;
    let m = &t.server.state.metrics.k8s;

    for tok in &tokens {
        let c = t.client().with_header("Authorization", &format!("Bearer {tok}"));
        assert_eq!(c.post_json("/v1/agents/heartbeat", &own(heartbeat("a1"))).await.status, 200);
    }
    assert!(m.token_cache_entries.get() <= 2, "cache bound");
    // The token that did not fit is reviewed again; the cached ones are not.
    let before = api.reviews();
    let c = t.client().with_header("Authorization", &format!("Bearer {}", tokens[0]));
    assert_eq!(c.post_json("/v1/agents/heartbeat", &own(heartbeat("a1"))).await.status, 200);
    let c2 = t.client().with_header("Authorization", &format!("Bearer {}", tokens[2]));
    assert_eq!(c2.post_json("/v1/agents/heartbeat", &own(heartbeat("a1"))).await.status, 200);
    assert_eq!(api.reviews(), before + 1);

    t.stop().await;

    // A token that lives 6 more seconds (5 to 6: exp is whole seconds; room for a loaded
    // machine's two requests) is cached (300 s TTL, room to spare) no longer than that:
    // after its exp the next request asks the API server again, which refuses it. The
    // agent's rotated token (same ServiceAccount, same node) is accepted at once.
    let t = authenticating_controller("k8s-auth-expiry", &api, 100, false).await;
    let exp = unix_now() + 6;
    let short = jwt("short", exp);
    api.put_token(&short, TokenFixture { exp, ..fixture(Some("node-a1")) });
    let c = t.client().with_header("Authorization", &format!("Bearer {short}"));
    let before = api.reviews();
    assert_eq!(c.post_json("/v1/agents/heartbeat", &own(heartbeat("a1"))).await.status, 200);
    assert_eq!(c.post_json("/v1/agents/heartbeat", &own(heartbeat("a1"))).await.status, 200);
    assert_eq!(api.reviews(), before + 1, "the second request came from the cache");
    while unix_now() <= exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = c.post_json("/v1/agents/heartbeat", &own(heartbeat("a1"))).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "UNAUTHENTICATED"));
    assert_eq!(api.reviews(), before + 2, "the expired token was not served from the cache");
    let next = jwt("next", unix_now() + 3_600);
    api.put_token(&next, fixture(Some("node-a1")));
    let c = t.client().with_header("Authorization", &format!("Bearer {next}"));
    assert_eq!(c.post_json("/v1/agents/heartbeat", &own(heartbeat("a1"))).await.status, 200);
    t.stop().await;
}

#[tokio::test]
async fn with_the_api_server_down_an_unknown_token_gets_503_and_a_cached_one_still_works() {
    let api = FakeKube::start().await;
    let good = jwt("good", unix_now() + 3_600);
    api.put_token(&good, fixture(Some("node-a1")));
    let t = authenticating_controller("k8s-auth-down", &api, 100, false).await;
    let c = t.client().with_header("Authorization", &format!("Bearer {good}"));
    assert_eq!(c.post_json("/v1/agents/hello", &own(hello("a1"))).await.status, 200);
    api.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.post_json("/v1/agents/heartbeat", &own(heartbeat("a1"))).await.status, 200);
    let other = jwt("other", unix_now() + 3_600);
    let r = t
        .client()
        .with_header("Authorization", &format!("Bearer {other}"))
        .post_json("/v1/agents/hello", &own(hello("a1")))
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (503, "NOT_READY"));
    assert_eq!(reviews(&t, "unavailable"), 1);
    t.stop().await;
}

#[tokio::test]
async fn names_sent_by_an_agent_are_never_stored_even_without_the_pod_watch() {
    let t = TestServer::start("k8s-spoof").await;
    let mut spoofed = ev(Some(UID_WEB), Some(CID_WEB));
    spoofed["k8s"] = json!({"k8s.pod.name": "someone-else", "k8s.namespace.name": "kube-system"});
    let out = send(&t, 1, vec![spoofed]).await;
    assert!(out[0].get("k8s").is_none(), "{}", out[0]);
    assert_eq!(out[0]["workload"]["pod_uid"], UID_WEB, "the rest is stored as sent");
    t.stop().await;
}
