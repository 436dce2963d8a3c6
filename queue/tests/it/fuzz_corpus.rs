//! Replays the cargo-fuzz corpora (`queue/fuzz/corpus/frame` and `queue/fuzz/corpus/record`)
//! through the fuzz targets' own bodies: `queue/fuzz/src/lib.rs` is included below, so this
//! makes exactly the calls the fuzzers make, on stable and without cargo-fuzz.
//!
//! Every file must go through without a panic. The `seed-*` files are valid frames (every
//! request and every response kind) and valid records written from the encoders by
//! `seed_corpus_matches_the_encoders`; each must still decode, so a decoder that starts refusing valid
//! input fails here. A missing corpus directory or seed file is a failure, not a skip.
//!
//! After an intended format change, regenerate the seeds with
//! `QUEUE_WRITE_SEED_CORPUS=1 cargo test -p queue --test it fuzz_corpus`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use queue::api::{
    AckOutcome, Confirm, DeadLetter, Delivery, Due, FetchOptions, GroupStats, Message, Peeked,
    Receipt, StartAt, TopicStats,
};
use queue::format::{
    BatchHeader, FLAG_NO_DEDUP, GroupOp, OpKind, SegmentHeader, encode_batch_header, encode_entry,
    encode_frame, encode_group_ops,
};
use queue::proto::{
    self, FRAME_BYTES_MAX, OP_ERROR, RESPONSE_BIT, Request, Response, WireError, op,
};

#[path = "../../fuzz/src/lib.rs"]
mod harness;

/// What a seed file must decode to.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Wire frames: every frame in the file decodes.
    Frames,
    /// On-disk bytes: `harness::record` counts exactly this many records.
    Records(usize),
}

struct Seed {
    target: &'static str,
    name: String,
    bytes: Vec<u8>,
    expect: Expect,
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

/// Every file of a corpus, sorted by name. Panics if the directory is missing or empty.
fn corpus_files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} is missing: {e}", dir.display()));
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.expect("read corpus directory entry");
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("read corpus file {}: {e}", path.display()));
        files.push((name, bytes));
    }
    files.sort();
    assert!(!files.is_empty(), "fuzz corpus {} is empty", dir.display());
    files
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs every corpus file through `run`; fails naming every file that panicked, with its
/// bytes in hex (what a crash report needs).
fn replay<T>(target: &str, run: impl Fn(&[u8]) -> T) -> usize {
    let files = corpus_files(target);
    let mut panicked = Vec::new();
    for (name, bytes) in &files {
        if catch_unwind(AssertUnwindSafe(|| run(bytes))).is_err() {
            panicked.push(format!("{target}/{name}: {}", hex(bytes)));
        }
    }
    assert!(
        panicked.is_empty(),
        "decoders panicked on corpus inputs:\n{}",
        panicked.join("\n")
    );
    files.len()
}

/// Checks every seed of `target` is on disk and still decodes as it did when written.
fn check_seeds(target: &str) {
    let dir = corpus_dir(target);
    let mut failures = Vec::new();
    for seed in seeds().iter().filter(|s| s.target == target) {
        let path = dir.join(&seed.name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "seed {} is missing ({e}); regenerate with `QUEUE_WRITE_SEED_CORPUS=1 cargo test -p \
                 queue --test it fuzz_corpus`",
                path.display()
            )
        });
        let problem = match seed.expect {
            Expect::Frames => frames_problem(&bytes),
            Expect::Records(want) => {
                let got = harness::record(&bytes);
                (got != want).then(|| format!("{got} records decoded, {want} expected"))
            }
        };
        if let Some(problem) = problem {
            failures.push(format!("{target}/{}: {problem}", seed.name));
        }
    }
    assert!(
        failures.is_empty(),
        "valid seed inputs no longer decode (a decoder regressed, or the format changed and \
         the seeds need `QUEUE_WRITE_SEED_CORPUS=1 cargo test -p queue --test it \
         fuzz_corpus`):\n{}",
        failures.join("\n")
    );
}

/// Why a seed of wire frames does not decode, if it does not: what the fuzz target reports
/// for the stream, then every frame on its own, as a request or as a response.
fn frames_problem(bytes: &[u8]) -> Option<String> {
    if !harness::frame(bytes) {
        return Some("proto::decode_any refused it".into());
    }
    let mut buf = BytesMut::from(bytes);
    let mut n = 0;
    loop {
        match proto::split_frame(&mut buf, FRAME_BYTES_MAX) {
            Ok(Some(f)) => {
                n += 1;
                let decoded = if f.opcode & RESPONSE_BIT != 0 {
                    let request = if f.opcode == OP_ERROR {
                        op::PUBLISH
                    } else {
                        f.opcode & !RESPONSE_BIT
                    };
                    Response::decode(request, f.opcode, f.body).map(drop)
                } else {
                    Request::decode(f.opcode, f.body).map(drop)
                };
                if let Err(e) = decoded {
                    return Some(format!("frame {n} (opcode {:#04x}): {e}", f.opcode));
                }
            }
            Ok(None) if buf.is_empty() && n > 0 => return None,
            Ok(None) => return Some(format!("{} bytes left after {n} frames", buf.len())),
            Err(e) => return Some(format!("frame {}: {e}", n + 1)),
        }
    }
}

#[test]
fn frame_corpus_replays_without_panics_and_seeds_decode() {
    let n = replay("frame", harness::frame);
    check_seeds("frame");
    eprintln!("replayed {n} frame inputs");
}

#[test]
fn record_corpus_replays_without_panics_and_seeds_decode() {
    let n = replay("record", harness::record);
    check_seeds("record");
    eprintln!("replayed {n} record inputs");
}

/// The committed `seed-*` files are exactly what the encoders write today, so a change of
/// the wire or disk format cannot slip past the corpus unnoticed. With
/// `QUEUE_WRITE_SEED_CORPUS=1` it (re)writes them instead, after an intended format change.
#[test]
fn seed_corpus_matches_the_encoders() {
    let write = std::env::var_os(WRITE_SEEDS_ENV).is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for seed in seeds() {
        let dir = corpus_dir(seed.target);
        let path = dir.join(&seed.name);
        if write {
            std::fs::create_dir_all(&dir).expect("create corpus directory");
            std::fs::write(&path, &seed.bytes).expect("write seed");
        } else if std::fs::read(&path).ok().as_deref() != Some(seed.bytes.as_slice()) {
            stale.push(format!("{}/{}", seed.target, seed.name));
        }
    }
    assert!(
        stale.is_empty(),
        "seed files differ from what the encoders write now (after an intended format \
         change, rerun with {WRITE_SEEDS_ENV}=1): {stale:?}"
    );
}

/// Set to 1 to rewrite the seed files.
const WRITE_SEEDS_ENV: &str = "QUEUE_WRITE_SEED_CORPUS";

// ---- the seeds ----

fn message(i: u8) -> Message {
    match i % 3 {
        0 => Message::new(&b"order-1"[..]),
        1 => Message::new(&b"{\"sku\":42}"[..])
            .with_id(0x0123_4567_89ab_cdef_0011_2233_4455_6677)
            .with_due(Due::After(600_000))
            .with_header("trace", b"abc".to_vec()),
        _ => Message::new(Bytes::new())
            .with_due(Due::At(1_700_000_000_000))
            .with_header("k", Vec::new())
            .with_header("content-type", b"json".to_vec()),
    }
}

fn receipt() -> Receipt {
    Receipt {
        offset: 41,
        attempt: 2,
    }
}

fn requests() -> Vec<Request> {
    let (topic, group) = ("orders".to_string(), "workers".to_string());
    vec![
        Request::Hello {
            min_version: proto::VERSION,
            max_version: proto::VERSION,
            client: "fuzz-seed".into(),
        },
        Request::Ping,
        Request::Publish {
            topic: topic.clone(),
            message: message(1),
        },
        Request::PublishBatch {
            topic: topic.clone(),
            messages: (0..3).map(message).collect(),
        },
        Request::CreateGroup {
            topic: topic.clone(),
            group: group.clone(),
            start: StartAt::Latest,
        },
        Request::Fetch {
            topic: topic.clone(),
            group: group.clone(),
            options: FetchOptions {
                max_messages: 32,
                lease_ms: Some(30_000),
                wait_ms: 1_000,
            },
        },
        Request::Ack {
            topic: topic.clone(),
            group: group.clone(),
            receipts: vec![
                receipt(),
                Receipt {
                    offset: 42,
                    attempt: 1,
                },
            ],
        },
        Request::Nack {
            topic: topic.clone(),
            group: group.clone(),
            receipt: receipt(),
            delay_ms: 5_000,
            reason: "db busy".into(),
        },
        Request::Reject {
            topic: topic.clone(),
            group: group.clone(),
            receipt: receipt(),
            reason: "poison".into(),
        },
        Request::DeadLetters {
            topic: topic.clone(),
            from: 0,
            limit: 100,
        },
        Request::Replay {
            topic: topic.clone(),
            dead_offset: 7,
        },
        Request::Discard {
            topic: topic.clone(),
            dead_offset: 8,
        },
        Request::Stats {
            topic: topic.clone(),
        },
        Request::Topics,
        Request::Peek {
            topic,
            from: 10,
            limit: 5,
        },
        Request::Auth {
            client_nonce: [0x5a; 32],
            proof: [0xa5; 32],
        },
        Request::PublishEach {
            topic: "orders".into(),
            messages: (0..3).map(message).collect(),
        },
    ]
}

/// A success response to every request opcode, plus an error frame.
fn responses() -> Vec<(u8, &'static str, Response)> {
    let headers = vec![("trace".to_string(), b"abc".to_vec())];
    let stats = TopicStats {
        name: "orders".into(),
        next_offset: 12,
        durable_end: 12,
        segments: 1,
        retained_bytes: 4096,
        published: 12,
        groups: vec![GroupStats {
            name: "workers".into(),
            lag: 3,
            in_flight: 1,
            ..GroupStats::default()
        }],
        ..TopicStats::default()
    };
    vec![
        (
            op::HELLO,
            "hello",
            Response::Hello {
                version: proto::VERSION,
                max_frame_bytes: FRAME_BYTES_MAX as u32,
                max_in_flight: 64,
                server: "queue".into(),
                challenge: Some([0x3c; 32]),
            },
        ),
        (op::PING, "ping", Response::Done),
        (
            op::PUBLISH,
            "publish",
            Response::Confirm(Confirm {
                offset: 11,
                duplicate: false,
            }),
        ),
        (
            op::PUBLISH_BATCH,
            "publish_batch",
            Response::Confirms(vec![
                Confirm {
                    offset: 12,
                    duplicate: false,
                },
                Confirm {
                    offset: 3,
                    duplicate: true,
                },
            ]),
        ),
        (op::CREATE_GROUP, "create_group", Response::Done),
        (
            op::FETCH,
            "fetch",
            Response::Deliveries(vec![
                Delivery {
                    offset: 41,
                    attempt: 2,
                    id: Some(99),
                    headers: headers.clone(),
                    payload: Bytes::from_static(b"order-1"),
                    due_ms: Some(1_700_000_000_000),
                    lease_until_ms: 1_700_000_030_000,
                },
                Delivery {
                    offset: 42,
                    attempt: 1,
                    id: None,
                    headers: Vec::new(),
                    payload: Bytes::new(),
                    due_ms: None,
                    lease_until_ms: 1_700_000_030_000,
                },
            ]),
        ),
        (
            op::ACK,
            "ack",
            Response::Outcomes(vec![
                AckOutcome::Acked,
                AckOutcome::AlreadyAcked,
                AckOutcome::LeaseLost,
                AckOutcome::Unknown,
            ]),
        ),
        (op::NACK, "nack", Response::Outcome(AckOutcome::Acked)),
        (
            op::REJECT,
            "reject",
            Response::Outcome(AckOutcome::LeaseLost),
        ),
        (
            op::DEAD_LETTERS,
            "dead_letters",
            Response::DeadLetters(vec![DeadLetter {
                dead_offset: 7,
                group: "workers".into(),
                original_offset: 41,
                attempts: 5,
                reason: "poison".into(),
                dead_at_ms: 1_700_000_000_500,
                id: Some(99),
                headers,
                payload: Bytes::from_static(b"order-1"),
            }]),
        ),
        (op::REPLAY, "replay", Response::Offset(13)),
        (op::DISCARD, "discard", Response::Done),
        (op::STATS, "stats", Response::Stats(stats)),
        (
            op::TOPICS,
            "topics",
            Response::Topics(vec!["orders".into(), "orders.dlq".into()]),
        ),
        (
            op::PEEK,
            "peek",
            Response::Peeked(vec![Peeked {
                offset: 10,
                id: None,
                headers: Vec::new(),
                payload: Bytes::from_static(b"x"),
                due_ms: Some(5),
            }]),
        ),
        (
            op::PUBLISH,
            "error",
            Response::Error(WireError {
                code: proto::code::FULL,
                message: "backlog full".into(),
                topic: "orders".into(),
                what: "bytes".into(),
                number: 1 << 30,
            }),
        ),
        (
            op::HELLO,
            "hello-no-auth",
            Response::Hello {
                version: proto::VERSION,
                max_frame_bytes: FRAME_BYTES_MAX as u32,
                max_in_flight: 64,
                server: "queue".into(),
                challenge: None,
            },
        ),
        (
            op::HELLO,
            "hello-v1",
            Response::Hello {
                version: proto::VERSION_MIN,
                max_frame_bytes: FRAME_BYTES_MAX as u32,
                max_in_flight: 64,
                server: "queue".into(),
                challenge: None,
            },
        ),
        (
            op::AUTH,
            "auth",
            Response::Authenticated { proof: [0xc3; 32] },
        ),
        (
            op::PUBLISH_EACH,
            "publish_each",
            Response::Each(vec![
                Ok(Confirm {
                    offset: 13,
                    duplicate: false,
                }),
                Err(WireError::from_error(&queue::Error::Invalid(
                    "bad header".into(),
                ))),
                Ok(Confirm {
                    offset: 3,
                    duplicate: true,
                }),
            ]),
        ),
    ]
}

fn segment_bytes() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut batch = Vec::new();
    encode_batch_header(
        &mut batch,
        &BatchHeader {
            base_offset: 100,
            publish_ms: 1_700_000_000_000,
            count: 4,
        },
    );
    let headers = vec![
        ("trace".to_string(), b"abc".to_vec()),
        ("k".to_string(), Vec::new()),
    ];
    encode_entry(&mut batch, 0, None, None, None, &[], b"order-1");
    encode_entry(
        &mut batch,
        0,
        Some(0x0123_4567_89ab_cdef),
        Some(1_700_000_600_000),
        None,
        &headers,
        b"{\"sku\":42}",
    );
    encode_entry(
        &mut batch,
        FLAG_NO_DEDUP,
        Some(5),
        None,
        Some("workers"),
        &[],
        b"replayed",
    );
    encode_entry(&mut batch, 0, None, Some(1), None, &headers, b"");

    let mut ops = Vec::new();
    encode_group_ops(
        &mut ops,
        "workers",
        &[
            GroupOp {
                kind: OpKind::Lease,
                offset: 100,
                attempts: 1,
                time_ms: 1_700_000_030_000,
            },
            GroupOp {
                kind: OpKind::Ack,
                offset: 100,
                attempts: 1,
                time_ms: 0,
            },
            GroupOp {
                kind: OpKind::Nack,
                offset: 101,
                attempts: 1,
                time_ms: 1_700_000_005_000,
            },
            GroupOp {
                kind: OpKind::Dead,
                offset: 102,
                attempts: 5,
                time_ms: 0,
            },
        ],
    );

    let mut segment = SegmentHeader {
        seq: 3,
        base_offset: 100,
    }
    .encode()
    .to_vec();
    encode_frame(&mut segment, &batch);
    encode_frame(&mut segment, &ops);
    (segment, batch, ops)
}

fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut stream = Vec::new();
    for (i, req) in requests().into_iter().enumerate() {
        let mut buf = BytesMut::new();
        req.encode(i as u32 + 1, &mut buf);
        if matches!(
            req,
            Request::Hello { .. } | Request::Auth { .. } | Request::Publish { .. }
        ) {
            stream.extend_from_slice(&buf);
        }
        out.push(Seed {
            target: "frame",
            name: format!("seed-request-{}", proto::op_name(req.opcode())),
            bytes: buf.to_vec(),
            expect: Expect::Frames,
        });
    }
    for (i, (request_opcode, name, resp)) in responses().into_iter().enumerate() {
        let mut buf = BytesMut::new();
        resp.encode(request_opcode, i as u32 + 1, &mut buf);
        if matches!(
            resp,
            Response::Hello { .. } | Response::Authenticated { .. } | Response::Confirm(_)
        ) {
            stream.extend_from_slice(&buf);
        }
        out.push(Seed {
            target: "frame",
            name: format!("seed-response-{name}"),
            bytes: buf.to_vec(),
            expect: Expect::Frames,
        });
    }
    // Several frames back to back, as a connection carries them.
    out.push(Seed {
        target: "frame",
        name: "seed-stream-hello-publish".into(),
        bytes: stream,
        expect: Expect::Frames,
    });

    let (segment, batch, ops) = segment_bytes();
    let mut ops_frame = Vec::new();
    encode_frame(&mut ops_frame, &ops);
    for (name, bytes, records) in [
        // A whole segment file: header, a message batch, group operations.
        ("seed-segment", segment, 2),
        // A checksummed frame without the segment header (as after the first record).
        ("seed-frame-group-ops", ops_frame, 1),
        // Frame bodies past the checksum, which fuzzing reaches through `decode_record`.
        ("seed-body-messages", batch, 1),
        ("seed-body-group-ops", ops, 1),
    ] {
        out.push(Seed {
            target: "record",
            name: name.into(),
            bytes,
            expect: Expect::Records(records),
        });
    }
    out
}

#[test]
fn seeds_cover_every_request_and_response_kind() {
    let seeds = seeds();
    let names: Vec<&str> = seeds.iter().map(|s| s.name.as_str()).collect();
    for opcode in (0..=u8::MAX).filter(|&o| proto::op_name(o) != "unknown") {
        let name = proto::op_name(opcode);
        for kind in ["request", "response"] {
            let want = format!("seed-{kind}-{name}");
            assert!(names.contains(&want.as_str()), "no seed {want}");
        }
    }
    assert!(names.contains(&"seed-response-error"));
    // The seeds are what the encoders write today, and they decode; `check_seeds` then
    // holds the files on disk to the same standard.
    for seed in &seeds {
        let ok = match seed.expect {
            Expect::Frames => frames_problem(&seed.bytes).is_none(),
            Expect::Records(n) => harness::record(&seed.bytes) == n,
        };
        assert!(ok, "fresh seed {} does not decode", seed.name);
    }
}
