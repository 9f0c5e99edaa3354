//! The agent's gRPC API end to end: a real TLS server over real recordings, callers checked by a
//! real Kubernetes API server (the test one scripts/test.sh starts; see fixture/mod.rs).

mod fixture;

use diffkeeper_rpc::export_request::Tree;
use diffkeeper_rpc::{
    connect, connect_with, export_to_dir, export_to_writer, ExportRequest, HealthRequest,
    ListContainersRequest, TimelineRequest, AGENT_SERVER_NAME,
};
use diffkeeper_store::{Op, Store, StoreError};
use fixture::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

const EXPORT: (&str, &str) = ("get", "recordings/export");
const LOG: (&str, &str) = ("get", "recordings/log");
const LIST: (&str, &str) = ("list", "recordings");

fn export_request(namespace: &str, pod_uid: &str, time: &str) -> ExportRequest {
    ExportRequest {
        container: Some(selector(namespace, pod_uid, "app")),
        time: time.into(),
        path_globs: Vec::new(),
        tree: Tree::Changes.into(),
    }
}

/// An agent with the "app" recording of pod uid-a in `namespace`.
async fn agent_with_app(cluster: &Cluster, namespace: &str) -> (TestAgent, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    write_app_recording(tmp.path());
    let history = Arc::new(TestHistory::default());
    history.add(
        container(namespace, "uid-a", "app", false),
        tmp.path(),
        None,
    );
    (TestAgent::start(cluster, history).await, tmp)
}

async fn export_tar(
    client: &mut diffkeeper_rpc::AgentConnection,
    request: ExportRequest,
) -> Result<(Vec<u8>, diffkeeper_rpc::ExportSummary), diffkeeper_rpc::RpcError> {
    let mut tar = Vec::new();
    let summary = export_to_writer(client, request, &mut tar, |_| {}).await?;
    Ok((tar, summary))
}

fn status_of(e: diffkeeper_rpc::RpcError) -> tonic::Status {
    match e {
        diffkeeper_rpc::RpcError::Status(s) => s,
        other => panic!("expected an answer from the agent, got: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_valid_token_are_unauthenticated() {
    let cluster = cluster().await;
    let ns = TestNamespace::new(&cluster.client, "rpc-authn").await;
    let (agent, _tmp) = agent_with_app(&cluster, &ns.name).await;

    let mut anonymous = agent.client(None).await;
    let e = anonymous.health(HealthRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("no bearer token"), "{}", e.message());
    let e = export_tar(&mut anonymous, export_request(&ns.name, "uid-a", "exit"))
        .await
        .map_err(status_of)
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = anonymous
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let mut forged = agent.client(Some("not-a-token-of-this-cluster")).await;
    let e = forged.health(HealthRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("does not accept"), "{}", e.message());

    // Any valid token may ask for health, with no RBAC at all.
    let mut bob = agent.client(Some(&cluster.bob)).await;
    let health = bob.health(HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(health.node, "node-1");
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(health.recording, 0);
    assert_eq!(health.store_bytes, 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_needs_get_recordings_export_in_the_pods_namespace() {
    let cluster = cluster().await;
    let ns = TestNamespace::new(&cluster.client, "rpc-export").await;
    let other = TestNamespace::new(&cluster.client, "rpc-export-other").await;
    let (agent, _tmp) = agent_with_app(&cluster, &ns.name).await;
    // A pod of the other namespace, recorded on the same node.
    let tmp_other = tempfile::tempdir().unwrap();
    write_app_recording(tmp_other.path());
    agent.history.add(
        container(&other.name, "uid-other", "app", false),
        tmp_other.path(),
        None,
    );
    grant(&cluster.client, &ns.name, "alice", &[EXPORT]).await;

    // bob has no binding: refused, and told what is missing.
    let mut bob = agent.client(Some(&cluster.bob)).await;
    let e = status_of(
        export_tar(&mut bob, export_request(&ns.name, "uid-a", "exit"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    for needed in ["bob", "get recordings/export", &ns.name] {
        assert!(e.message().contains(needed), "{needed}: {}", e.message());
    }
    // log rights are not export rights
    grant(&cluster.client, &ns.name, "bob", &[LOG]).await;
    let e = status_of(
        export_tar(&mut bob, export_request(&ns.name, "uid-a", "exit"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // alice may: the tar holds exactly what was written.
    let mut alice = agent.client(Some(&cluster.alice)).await;
    let (tar, summary) = export_tar(&mut alice, export_request(&ns.name, "uid-a", "exit"))
        .await
        .unwrap();
    let files = tar_files(&tar);
    assert_eq!(files["app/data.txt"].1, b"v2!\n");
    assert_eq!(files["app/big.bin"].1, big_bin());
    assert_eq!(files["app/link"].0, tar::EntryType::Symlink);
    assert_eq!(files["app/link"].1, b"data.txt");
    assert_eq!((summary.files, summary.dirs, summary.symlinks), (2, 1, 1));
    assert_eq!(summary.bytes, 4 + 300 * 1024);
    assert_eq!(summary.time, "2026-11-25T10:00:07Z");

    // Earlier moments: before the second write, and before big.bin existed.
    let (tar, _) = export_tar(&mut alice, export_request(&ns.name, "uid-a", "exit-1500ms"))
        .await
        .unwrap();
    assert_eq!(tar_files(&tar)["app/data.txt"].1, b"v1\n");
    let (tar, summary) = export_tar(&mut alice, export_request(&ns.name, "uid-a", "2500ms"))
        .await
        .unwrap();
    let files = tar_files(&tar);
    assert_eq!(files["app/data.txt"].1, b"v1\n");
    assert!(!files.contains_key("app/big.bin"));
    assert_eq!(summary.time, "2026-11-25T10:00:02.5Z");

    // Unpacked into a directory, the files are the same bytes.
    let out = tempfile::tempdir().unwrap();
    let mut seen = 0;
    let summary = export_to_dir(
        &mut alice,
        export_request(&ns.name, "uid-a", "end"),
        out.path(),
        |bytes| seen = bytes,
    )
    .await
    .unwrap();
    assert!(seen > 300 * 1024);
    assert_eq!(summary.files, 2);
    assert_eq!(
        std::fs::read(out.path().join("app/big.bin")).unwrap(),
        big_bin()
    );
    assert_eq!(
        std::fs::read(out.path().join("app/data.txt")).unwrap(),
        b"v2!\n"
    );
    assert_eq!(
        std::fs::read_link(out.path().join("app/link")).unwrap(),
        std::path::Path::new("data.txt")
    );

    // Naming a namespace alice may not read: refused before anything is looked up.
    let e = status_of(
        export_tar(&mut alice, export_request(&other.name, "uid-other", "exit"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Naming her namespace for a pod of another: not found, exactly as an unknown pod is.
    let e = status_of(
        export_tar(&mut alice, export_request(&ns.name, "uid-other", "exit"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e2 = status_of(
        export_tar(&mut alice, export_request(&ns.name, "uid-nope", "exit"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e2.code(), Code::NotFound, "{e2:?}");
    assert_eq!(
        e.message().replace("uid-other", "X"),
        e2.message().replace("uid-nope", "X")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tree_adds_the_image_files_to_the_changes() {
    let cluster = cluster().await;
    let ns = TestNamespace::new(&cluster.client, "rpc-full").await;
    let (agent, _tmp) = agent_with_app(&cluster, &ns.name).await;
    let image = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(image.path().join("etc")).unwrap();
    std::fs::create_dir_all(image.path().join("app")).unwrap();
    std::fs::write(image.path().join("etc/os-release"), "ID=debian\n").unwrap();
    std::fs::write(image.path().join("app/data.txt"), "from the image\n").unwrap();
    agent
        .history
        .set_image("uid-a", vec![image.path().to_path_buf()]);
    grant(&cluster.client, &ns.name, "alice", &[EXPORT]).await;
    let mut alice = agent.client(Some(&cluster.alice)).await;

    let mut full = export_request(&ns.name, "uid-a", "exit");
    full.tree = Tree::Full.into();
    let (tar, _) = export_tar(&mut alice, full).await.unwrap();
    let files = tar_files(&tar);
    assert_eq!(files["etc/os-release"].1, b"ID=debian\n");
    // What the container wrote wins over the image's file at the same path.
    assert_eq!(files["app/data.txt"].1, b"v2!\n");
    assert_eq!(files["app/big.bin"].1, big_bin());

    let (tar, _) = export_tar(&mut alice, export_request(&ns.name, "uid-a", "exit"))
        .await
        .unwrap();
    let files = tar_files(&tar);
    assert!(!files.contains_key("etc/os-release"), "{:?}", files.keys());
    assert_eq!(files["app/data.txt"].1, b"v2!\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_reason() {
    let cluster = cluster().await;
    let ns = TestNamespace::new(&cluster.client, "rpc-bad").await;
    let (agent, _tmp) = agent_with_app(&cluster, &ns.name).await;
    grant(&cluster.client, &ns.name, "alice", &[EXPORT, LOG]).await;
    let mut alice = agent.client(Some(&cluster.alice)).await;

    let e = status_of(
        export_tar(&mut alice, export_request(&ns.name, "uid-a", "yesterday"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("\"yesterday\""), "{}", e.message());

    let e = status_of(
        export_tar(&mut alice, export_request(&ns.name, "uid-a", "1h"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("outside the recording"),
        "{}",
        e.message()
    );

    let mut relative_glob = export_request(&ns.name, "uid-a", "exit");
    relative_glob.path_globs = vec!["app/*.txt".into()];
    let e = status_of(export_tar(&mut alice, relative_glob).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("relative"), "{}", e.message());

    let e = alice
        .timeline(TimelineRequest {
            container: Some(selector(&ns.name, "uid-a", "app")),
            from: "soon".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("from \"soon\""), "{}", e.message());

    let mut no_namespace = export_request("", "uid-a", "exit");
    no_namespace.container.as_mut().unwrap().namespace.clear();
    let e = status_of(export_tar(&mut alice, no_namespace).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // 70 KiB of globs: refused before it is even decoded (tonic says OUT_OF_RANGE).
    let mut oversized = export_request(&ns.name, "uid-a", "exit");
    oversized.path_globs = (0..70)
        .map(|i| format!("/{i}/{}", "x".repeat(1024)))
        .collect();
    let e = status_of(export_tar(&mut alice, oversized).await.unwrap_err());
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(
        e.message().contains("the limit is: 65536"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_export_stops_and_frees_the_store() {
    let cluster = cluster().await;
    let ns = TestNamespace::new(&cluster.client, "rpc-cancel").await;
    let tmp = tempfile::tempdir().unwrap();
    // 8 MiB of tar: far more than the agent buffers, so the export is mid-way when cancelled.
    write_large_recording(tmp.path(), 16, 512 * 1024);
    let history = Arc::new(TestHistory::default());
    history.add(
        container(&ns.name, "uid-big", "app", false),
        tmp.path(),
        None,
    );
    let agent = TestAgent::start(&cluster, history).await;
    grant(&cluster.client, &ns.name, "alice", &[EXPORT]).await;
    let mut alice = agent.client(Some(&cluster.alice)).await;

    let mut stream = alice
        .export(export_request(&ns.name, "uid-big", "exit"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first chunk");
    assert!(first.summary.is_none());
    // The export holds the store open...
    assert!(matches!(
        Store::open(tmp.path()),
        Err(StoreError::Locked { .. })
    ));
    drop(stream);
    // ...and lets go of it once the client is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(tmp.path()) {
            Ok(_) => break,
            Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("the cancelled export still holds the store: {e}"),
        }
    }

    // The same export read to the end is whole.
    let (tar, summary) = export_tar(&mut alice, export_request(&ns.name, "uid-big", "exit"))
        .await
        .unwrap();
    assert_eq!(summary.files, 16);
    assert_eq!(tar_files(&tar)["data/file-007"].1, noise(512 * 1024, 107));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_streams_events_and_follows_a_live_container() {
    let cluster = cluster().await;
    let ns = TestNamespace::new(&cluster.client, "rpc-timeline").await;
    let (agent, _tmp) = agent_with_app(&cluster, &ns.name).await;
    grant(&cluster.client, &ns.name, "alice", &[LOG]).await;

    // Without get recordings/log: refused.
    let mut bob = agent.client(Some(&cluster.bob)).await;
    let e = bob
        .timeline(TimelineRequest {
            container: Some(selector(&ns.name, "uid-a", "app")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("get recordings/log"),
        "{}",
        e.message()
    );

    let mut alice = agent.client(Some(&cluster.alice)).await;
    let events = collect(
        &mut alice,
        TimelineRequest {
            container: Some(selector(&ns.name, "uid-a", "app")),
            ..Default::default()
        },
    )
    .await;
    let ops: Vec<&str> = events.iter().map(|e| e.op.as_str()).collect();
    assert_eq!(
        ops,
        [
            "mkdir", "create", "write", "create", "write", "write", "write", "symlink", "marker",
            "write"
        ]
    );
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[0].time, "2026-11-25T10:00:01Z");
    assert_eq!(events[2].path, "/app/data.txt");
    assert_eq!(events[2].bytes, 3);
    assert_eq!((events[2].pid, events[2].comm.as_str()), (42, "app"));
    assert_eq!(events[7].target, "data.txt");
    assert!(events[8].gap);
    assert_eq!(events[8].note, "3 capture records lost");

    // Only big.bin (the gap is always shown: it may hide changes to any path), from 2.5s on.
    let events = collect(
        &mut alice,
        TimelineRequest {
            container: Some(selector(&ns.name, "uid-a", "app")),
            from: "2500ms".into(),
            to: "exit".into(),
            path_globs: vec!["/app/*.bin".into()],
            follow: false,
        },
    )
    .await;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [4, 5, 6, 7, 9]);

    // A live container: what is there, then new events as they are committed, until it ends.
    let live_dir = tempfile::tempdir().unwrap();
    let mut writer = new_recording(live_dir.path());
    let node = writer.new_node();
    writer
        .append(diffkeeper_store::Event {
            time: STARTED_MONO_NS + 1_000_000_000,
            process: None,
            op: Op::Create {
                node,
                path: path("/log.txt"),
                mode: 0o644,
            },
        })
        .unwrap();
    writer.commit().unwrap();
    agent.history.add(
        container(&ns.name, "uid-live", "app", true),
        live_dir.path(),
        Some(writer),
    );
    let mut stream = alice
        .timeline(TimelineRequest {
            container: Some(selector(&ns.name, "uid-live", "app")),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!((first.seq, first.op.as_str()), (1, "create"));
    agent.history.with_writer("uid-live", |w| {
        w.append(diffkeeper_store::Event {
            time: STARTED_MONO_NS + 2_000_000_000,
            process: None,
            op: Op::Write {
                node,
                offset: 0,
                data: b"started\n".to_vec(),
            },
        })
        .unwrap();
        w.commit().unwrap();
    });
    let second = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the followed write within a few polls")
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.seq, second.op.as_str(), second.bytes),
        (2, "write", 8)
    );
    agent
        .history
        .end("uid-live", STARTED_MONO_NS + 3_000_000_000);
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends soon after the container")
        .unwrap();
    assert!(end.is_none(), "no more events after the end: {end:?}");
}

async fn collect(
    client: &mut diffkeeper_rpc::AgentConnection,
    request: TimelineRequest,
) -> Vec<diffkeeper_rpc::TimelineEvent> {
    let mut stream = client.timeline(request).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_containers_shows_only_namespaces_the_caller_may_list() {
    let cluster = cluster().await;
    let mine = TestNamespace::new(&cluster.client, "rpc-list").await;
    let theirs = TestNamespace::new(&cluster.client, "rpc-list-other").await;
    let (agent, _tmp) = agent_with_app(&cluster, &mine.name).await;
    let tmp = tempfile::tempdir().unwrap();
    write_app_recording(tmp.path());
    agent.history.add(
        container(&theirs.name, "uid-b", "db", true),
        tmp.path(),
        None,
    );
    grant(&cluster.client, &mine.name, "alice", &[LIST]).await;

    let names = |r: diffkeeper_rpc::ListContainersResponse| -> Vec<String> {
        r.containers
            .into_iter()
            .map(|c| format!("{}/{}", c.namespace, c.pod_uid))
            .collect()
    };
    let mut alice = agent.client(Some(&cluster.alice)).await;
    let all = alice
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(all), [format!("{}/uid-a", mine.name)]);

    let mut bob = agent.client(Some(&cluster.bob)).await;
    let none = bob
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(none.containers.is_empty());
    let e = bob
        .list_containers(ListContainersRequest {
            namespace: mine.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("list recordings"), "{}", e.message());

    let mut admin = agent.client(Some(&cluster.admin)).await;
    let everything = admin
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everything.containers.len(), 2);
    let one = admin
        .list_containers(ListContainersRequest {
            namespace: theirs.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(one), [format!("{}/uid-b", theirs.name)]);
    let health = admin.health(HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(health.recording, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_required_and_the_agent_certificate_checked() {
    let cluster = cluster().await;
    let history = Arc::new(TestHistory::default());
    let agent = TestAgent::start(&cluster, history).await;
    let endpoint = agent.addr.to_string();

    // The well-known name over a connection of our own making, as a port-forward is.
    let addr = agent.addr;
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tcp))
    });
    let mut tunnelled = connect_with(
        connector,
        agent.ca.cert_pem.as_bytes(),
        AGENT_SERVER_NAME,
        Some(cluster.admin.clone()),
    )
    .await
    .unwrap();
    tunnelled.health(HealthRequest {}).await.unwrap();
    // https:// endpoints as ContainerRecords report them work too.
    let mut by_url = connect(
        &format!("https://{endpoint}"),
        agent.ca.cert_pem.as_bytes(),
        None,
        Some(cluster.admin.clone()),
    )
    .await
    .unwrap();
    by_url.health(HealthRequest {}).await.unwrap();

    // Another CA, or a name the certificate does not carry: no connection.
    let stranger = new_ca();
    let e = connect(&endpoint, stranger.cert_pem.as_bytes(), None, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot connect"), "{e}");
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
    let e = connect(
        &endpoint,
        agent.ca.cert_pem.as_bytes(),
        Some("someone-else"),
        None,
    )
    .await
    .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let e = connect(
        &format!("http://{endpoint}"),
        agent.ca.cert_pem.as_bytes(),
        None,
        None,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("https only"), "{e}");

    // Plaintext HTTP/2 gets no answer.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await;
    if let Ok(channel) = channel {
        let mut plain = diffkeeper_rpc::agent_client::AgentClient::new(channel);
        let e = tokio::time::timeout(Duration::from_secs(5), plain.health(HealthRequest {}))
            .await
            .map(|r| r.unwrap_err().code());
        assert!(!matches!(e, Ok(Code::Ok)), "a plaintext call was answered");
    }
}
