//! One run of paced publishes from one publisher to N subscribers, all on the bench's
//! single-threaded runtime (core 1), against one broker (core 0).
//!
//! Each payload carries the send time (ns since
//! [`EPOCH`](switchboard_bench::clock::EPOCH)) and a sequence number; a subscriber
//! subtracts the time from the moment its read returned. A point publishes
//! at a fixed rate for a warm-up, then for the measured window, then waits for the
//! stragglers: every message of the window each subscriber did not receive is lost.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use crate::brokers::{Broker, Kind};
use switchboard_bench::clock::{now_ns, percentile_us};
use switchboard_bench::proto::{self, Frame, MqttTcp, Ws};
use switchboard_bench::read_buf::{invalid, number_after, ReadBuf};
use switchboard_bench::ws_frame::{encode, encode_pong, OP_BINARY, OP_TEXT};

pub const TOPIC: &str = "bench/x";
const FILTER: &str = "bench/#";
/// Latency is recorded on at most this many subscribers (every message of each).
const SAMPLED_SUBSCRIBERS: usize = 50;
const MAX_SAMPLES: usize = 4_000_000;
/// Deliveries outstanding (published but not received) at which a point is abandoned,
/// so a broker that falls far behind does not queue gigabytes.
const MAX_BACKLOG: u64 = 2_000_000;
/// p99 above which a rate does not count as sustained: the subscriber is behind.
pub const BEHIND_P99_US: f64 = 100_000.0;
/// Other work (in cores) above which a point is disturbed: the broker shares core 0
/// with whatever else runs, and with half a core taken it falls behind at a third of
/// its rate.
pub const DISTURBED_CPU: f64 = 0.15;

/// Which way the messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A device publishes over MQTT/TCP, subscribers are on WebSocket.
    MqttToWs,
    /// A WebSocket client publishes, one MQTT/TCP subscriber.
    WsToMqtt,
    /// A WebSocket client publishes, subscribers are on WebSocket: the control for
    /// `MqttToWs`, the same paced fan-out without the MQTT ingress.
    WsToWs,
    /// A device publishes over MQTT/TCP, subscribers are MQTT/TCP devices: what the
    /// embedded router does against Mosquitto's, with no WebSocket anywhere.
    MqttToMqtt,
}

#[derive(Default)]
pub struct Shared {
    phase_start: Cell<u64>,
    received: Cell<u64>,
    samples: RefCell<Vec<u64>>,
    lagged: Cell<u64>,
    pub failures: Cell<u64>,
    pub first_failure: RefCell<Option<String>>,
    closing: Cell<bool>,
}

impl Shared {
    fn on_payload(&self, payload: &[u8], sample: bool) {
        let Some(n) = number_after(payload, b"\"n\":") else {
            return;
        };
        if n < self.phase_start.get() {
            return;
        }
        self.received.set(self.received.get() + 1);
        if sample {
            if let Some(t) = number_after(payload, b"\"t\":") {
                let mut s = self.samples.borrow_mut();
                if s.len() < MAX_SAMPLES {
                    s.push(now_ns().saturating_sub(t));
                }
            }
        }
    }

    fn fail(&self, what: String) {
        if self.closing.get() {
            return;
        }
        self.failures.set(self.failures.get() + 1);
        self.first_failure.borrow_mut().get_or_insert(what);
    }
}

/// PUBLISHes the MQTT publisher keeps unacknowledged at `--qos 1`, as a device does:
/// MQTT 3.1.1 announces no Receive Maximum, and 32 sits between Paho's 20 and
/// rumqttc's 100. A window of 32 over a 100 µs round trip allows 320,000 msg/s, so the
/// window bounds the rate only when the broker is slow to acknowledge.
pub const IN_FLIGHT: u64 = 32;
/// How long the publisher waits for a PUBACK before giving up on the point.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// PUBACKs the QoS 1 publisher's reader counted, and a wake-up for a full window.
#[derive(Default)]
struct Acks {
    count: Cell<u64>,
    arrived: tokio::sync::Notify,
}

/// One rate point.
#[derive(Debug, Clone)]
pub struct Point {
    pub rate: u64,
    pub achieved: f64,
    pub expected: u64,
    pub received: u64,
    pub lagged: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    pub drain: Duration,
    pub aborted: bool,
    pub broker_cpu: f64,
    /// CPU share of the bench process (publisher and subscribers, one core).
    pub client_cpu: f64,
    /// Cores' worth of CPU other work (other processes on this shared machine) used
    /// during the window: above [`DISTURBED_CPU`] the point says little about the broker.
    pub other_cpu: f64,
    pub broker_rss_mib: u64,
}

impl Point {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    /// The publisher reached 97% of the rate (less one message/s for rounding at
    /// low rates).
    fn kept_rate(&self) -> bool {
        self.achieved >= 0.97 * self.rate as f64 - 1.0
    }

    /// Zero loss, the publisher kept its rate, and the subscribers kept up.
    pub fn sustained(&self) -> bool {
        !self.aborted
            && self.lost() == 0
            && self.lagged == 0
            && self.kept_rate()
            && self.p99_us.is_some_and(|p| p < BEHIND_P99_US)
    }

    pub fn verdict(&self) -> String {
        if self.aborted {
            return "behind (backlog)".into();
        }
        let mut why = Vec::new();
        if self.lost() > 0 || self.lagged > 0 {
            why.push(format!("lost {}", self.lost().max(self.lagged)));
        }
        if !self.kept_rate() {
            why.push(format!("publisher at {:.0}/s", self.achieved));
        }
        if self.p99_us.is_none_or(|p| p >= BEHIND_P99_US) {
            why.push("behind".into());
        }
        let verdict = if why.is_empty() {
            "ok".into()
        } else {
            why.join(", ")
        };
        if self.other_cpu > DISTURBED_CPU {
            format!("{verdict} (other work {:.0}%)", self.other_cpu * 100.0)
        } else {
            verdict
        }
    }
}

/// The publishing side of a run.
pub struct Publisher {
    how: Pub,
    tx: OwnedWriteHalf,
    seq: u64,
    /// At QoS 1: PUBACKs received so far (the publisher's sequence starts at 0).
    acks: Option<Rc<Acks>>,
    buf: Vec<u8>,
    payload: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Pub {
    Mqtt,
    SwitchboardWs,
    MqttOverWs,
}

impl Publisher {
    fn encode(&mut self) {
        self.payload.clear();
        proto::payload(now_ns(), self.seq, &mut self.payload);
        // Ids cycle through 1..=65535; at most IN_FLIGHT are in use at once.
        let id = self.acks.as_ref().map(|_| (self.seq % 65_535) as u16 + 1);
        self.seq += 1;
        match self.how {
            Pub::Mqtt => proto::publish_with(TOPIC.as_bytes(), &self.payload, id, &mut self.buf),
            Pub::SwitchboardWs => {
                let mut text = Vec::with_capacity(self.payload.len() + 40);
                text.extend_from_slice(br#"{"op":"pub","topic":""#);
                text.extend_from_slice(TOPIC.as_bytes());
                text.extend_from_slice(br#"","data":"#);
                text.extend_from_slice(&self.payload);
                text.push(b'}');
                encode(OP_TEXT, &text, &mut self.buf);
            }
            Pub::MqttOverWs => {
                let mut packet = Vec::with_capacity(self.payload.len() + 16);
                proto::publish(TOPIC.as_bytes(), &self.payload, &mut packet);
                encode(OP_BINARY, &packet, &mut self.buf);
            }
        }
    }
}

impl Publisher {
    /// Encodes and writes `n` messages. At QoS 1 no more than [`IN_FLIGHT`] are
    /// unacknowledged: a full window waits for PUBACKs, so a broker slow to acknowledge
    /// shows as a publisher below its rate.
    async fn send(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            let k = match self.acks.clone() {
                None => n,
                Some(acks) => loop {
                    let room = IN_FLIGHT - (self.seq - acks.count.get()).min(IN_FLIGHT);
                    if room > 0 {
                        break n.min(room);
                    }
                    let wait = tokio::time::timeout(PUBACK_TIMEOUT, acks.arrived.notified());
                    if wait.await.is_err() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no PUBACK for {} s", PUBACK_TIMEOUT.as_secs()),
                        ));
                    }
                },
            };
            self.buf.clear();
            for _ in 0..k {
                self.encode();
            }
            self.tx.write_all(&self.buf).await?;
            n -= k;
        }
        Ok(())
    }
}

/// Connected clients of one broker, ready for points.
pub struct Setup {
    pub shared: Rc<Shared>,
    pub publisher: Publisher,
    pub subs: usize,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.shared.closing.set(true);
    }
}

/// Connects `subs` subscribers and the publisher. `qos` 1 applies to the MQTT/TCP
/// clients: the MQTT publisher and MQTT/TCP subscribers (WebSocket subscribers, and
/// Mosquitto's MQTT-over-WebSocket ones, stay as they are).
pub async fn setup(
    broker: &Broker,
    direction: Direction,
    subs: usize,
    qos: u8,
) -> io::Result<Setup> {
    let shared = Rc::new(Shared::default());
    let stride = subs.div_ceil(SAMPLED_SUBSCRIBERS).max(1);
    let (kind, ws_addr, mqtt_addr) = (broker.kind, broker.ws, broker.mqtt);
    let mut i = 0;
    while i < subs {
        let batch: Vec<usize> = (i..subs.min(i + 100)).collect();
        i += batch.len();
        let conns = futures_util::future::join_all(batch.iter().map(|&k| async move {
            match direction {
                Direction::MqttToWs | Direction::WsToWs => {
                    ws_subscriber(kind, ws_addr, k).await.map(Sub::Ws)
                }
                Direction::WsToMqtt | Direction::MqttToMqtt => {
                    let mut c = MqttTcp::connect(mqtt_addr, &format!("benchsub{k}")).await?;
                    c.subscribe(FILTER, qos).await?;
                    Ok(Sub::Mqtt(c))
                }
            }
        }))
        .await;
        for (k, conn) in batch.into_iter().zip(conns) {
            let sample = k % stride == 0;
            let sh = shared.clone();
            match conn? {
                Sub::Ws(ws) => {
                    tokio::task::spawn_local(read_ws(ws, kind, sh, sample));
                }
                Sub::Mqtt(c) => {
                    tokio::task::spawn_local(read_mqtt(c, sh, sample));
                }
            }
        }
    }
    let mut acks = None;
    let (how, tx) = match direction {
        Direction::MqttToWs | Direction::MqttToMqtt => {
            let c = MqttTcp::connect(mqtt_addr, "benchpub").await?;
            let MqttTcp { r, tx } = c;
            if qos > 0 {
                acks = Some(Rc::new(Acks::default()));
            }
            tokio::task::spawn_local(read_acks(r, acks.clone(), shared.clone()));
            (Pub::Mqtt, tx)
        }
        Direction::WsToMqtt | Direction::WsToWs => {
            let ws = match kind {
                Kind::Switchboard => {
                    let ws = Ws::connect(ws_addr, "/ws", None).await?;
                    (Pub::SwitchboardWs, ws)
                }
                Kind::Mosquitto => {
                    let mut ws = Ws::connect(ws_addr, "/mqtt", Some("mqtt")).await?;
                    let mut mq = Vec::new();
                    mqtt_over_ws_handshake(&mut ws, &mut mq, "benchpub", None).await?;
                    (Pub::MqttOverWs, ws)
                }
            };
            let (how, ws) = ws;
            let sh = shared.clone();
            let Ws { r: mut reader, tx } = ws;
            // Replies (switchboard answers every `pub`) are read and dropped; errors
            // are counted.
            tokio::task::spawn_local(async move {
                loop {
                    while let Ok(Some(f)) = reader.next_frame() {
                        if let Frame::Text(t) = f {
                            if t.starts_with(br#"{"op":"error""#) {
                                sh.fail(String::from_utf8_lossy(t).into_owned());
                            }
                        }
                    }
                    if !matches!(reader.fill().await, Ok(true)) {
                        break;
                    }
                }
            });
            (how, tx)
        }
    };
    Ok(Setup {
        shared,
        publisher: Publisher {
            how,
            tx,
            seq: 0,
            acks,
            buf: Vec::with_capacity(64 * 1024),
            payload: Vec::with_capacity(128),
        },
        subs,
    })
}

enum Sub {
    Ws(Ws),
    Mqtt(MqttTcp),
}

/// CONNECT (and SUBSCRIBE to `filter`) in binary frames; waits for the acks.
async fn mqtt_over_ws_handshake(
    ws: &mut Ws,
    mq: &mut Vec<u8>,
    client_id: &str,
    filter: Option<&str>,
) -> io::Result<()> {
    let mut out = Vec::new();
    proto::connect(client_id, &mut out);
    ws.send(OP_BINARY, &out).await?;
    let mut want = vec![0x20u8];
    if let Some(f) = filter {
        out.clear();
        proto::subscribe(1, f, 0, &mut out);
        ws.send(OP_BINARY, &out).await?;
        want.push(0x90);
    }
    for kind in want {
        loop {
            if let Some((first, body)) = proto::next_packet(mq)? {
                let ok = first & 0xf0 == kind
                    && match kind {
                        0x20 => mq.get(body.start + 1) == Some(&0),
                        _ => mq.get(body.start + 2).is_some_and(|&rc| rc & 0x80 == 0),
                    };
                mq.drain(..body.end);
                if !ok {
                    return Err(invalid(format!(
                        "MQTT over WebSocket: refused ({first:#x})"
                    )));
                }
                break;
            }
            let data = ws.next_data().await?;
            mq.extend_from_slice(&data);
        }
    }
    Ok(())
}

async fn ws_subscriber(kind: Kind, addr: std::net::SocketAddr, k: usize) -> io::Result<Ws> {
    match kind {
        Kind::Switchboard => {
            let mut ws = Ws::connect(addr, "/ws", None).await?;
            ws.send(OP_TEXT, br#"{"op":"sub","id":"1","topic":"bench/#"}"#)
                .await?;
            for _ in 0..8 {
                let text = ws.next_data().await?;
                if text.starts_with(br#"{"op":"ok""#) {
                    return Ok(ws);
                }
                if text.starts_with(br#"{"op":"error""#) {
                    return Err(invalid(String::from_utf8_lossy(&text)));
                }
            }
            Err(invalid("no ok for sub"))
        }
        Kind::Mosquitto => {
            let mut ws = Ws::connect(addr, "/mqtt", Some("mqtt")).await?;
            let mut mq = Vec::new();
            mqtt_over_ws_handshake(&mut ws, &mut mq, &format!("benchsub{k}"), Some(FILTER)).await?;
            Ok(ws)
        }
    }
}

const MSG: &[u8] = br#"{"op":"msg""#;
const LAGGED: &[u8] = br#"{"op":"lagged""#;

async fn read_ws(mut ws: Ws, kind: Kind, sh: Rc<Shared>, sample: bool) {
    // Mosquitto's MQTT stream, reassembled from binary frames.
    let mut mq: Vec<u8> = Vec::new();
    loop {
        let mut pong = Vec::new();
        loop {
            let frame = match ws.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return sh.fail(format!("{}: {e}", kind.name())),
            };
            match frame {
                Frame::Text(t) if t.starts_with(MSG) => sh.on_payload(t, sample),
                Frame::Text(t) if t.starts_with(LAGGED) => {
                    let n = number_after(t, b"\"dropped\":").unwrap_or(1);
                    sh.lagged.set(sh.lagged.get() + n);
                }
                Frame::Text(_) | Frame::Other => {}
                Frame::Binary(b) => {
                    mq.extend_from_slice(b);
                    let mut at = 0;
                    while let Ok(Some((first, body))) = proto::next_packet(&mq[at..]) {
                        if first & 0xf0 == proto::PUBLISH {
                            let body = &mq[at + body.start..at + body.end];
                            if let Some(p) = proto::publish_payload(first, body) {
                                sh.on_payload(p, sample);
                            }
                        }
                        at += body.end;
                    }
                    mq.drain(..at);
                }
                Frame::Ping(p) => encode_pong(p, &mut pong),
                Frame::Close => return sh.fail(format!("{} closed the connection", kind.name())),
            }
        }
        if !pong.is_empty() && ws.tx.write_all(&pong).await.is_err() {
            return sh.fail(format!("{}: write failed", kind.name()));
        }
        match ws.fill().await {
            Ok(true) => {}
            Ok(false) => return sh.fail(format!("{}: end of stream", kind.name())),
            Err(e) => return sh.fail(format!("{}: {e}", kind.name())),
        }
    }
}

/// Calls `on` with each complete MQTT packet buffered in `r` (first byte, body) and
/// consumes it.
fn packets(r: &mut ReadBuf, mut on: impl FnMut(u8, &[u8])) -> io::Result<()> {
    while let Some((first, body)) = proto::next_packet(r.pending())? {
        on(first, &r.buf[r.start + body.start..r.start + body.end]);
        r.start += body.end;
    }
    Ok(())
}

/// The MQTT publisher's read side: counts PUBACKs at QoS 1 (they arrive in order).
async fn read_acks(mut r: ReadBuf, acks: Option<Rc<Acks>>, sh: Rc<Shared>) {
    loop {
        let counted = packets(&mut r, |first, _| {
            if let Some(a) = acks.as_ref().filter(|_| first & 0xf0 == proto::PUBACK) {
                a.count.set(a.count.get() + 1);
                a.arrived.notify_one();
            }
        });
        if let Err(e) = counted {
            return sh.fail(format!("MQTT publisher: {e}"));
        }
        match r.fill().await {
            Ok(true) => {}
            Ok(false) => return sh.fail("MQTT publisher: end of stream".into()),
            Err(e) => return sh.fail(format!("MQTT publisher: {e}")),
        }
    }
}

/// An MQTT/TCP subscriber: acknowledges each QoS 1 PUBLISH, one write per read.
async fn read_mqtt(mut c: MqttTcp, sh: Rc<Shared>, sample: bool) {
    let mut acks = Vec::new();
    loop {
        let read = packets(&mut c.r, |first, body| {
            if first & 0xf0 == proto::PUBLISH {
                if let Some(p) = proto::publish_payload(first, body) {
                    sh.on_payload(p, sample);
                }
                if let Some(id) = proto::publish_packet_id(first, body) {
                    proto::puback(id, &mut acks);
                }
            }
        });
        if let Err(e) = read {
            return sh.fail(e.to_string());
        }
        if !acks.is_empty() {
            if let Err(e) = c.tx.write_all(&acks).await {
                return sh.fail(format!("MQTT subscriber: {e}"));
            }
            acks.clear();
        }
        match c.fill().await {
            Ok(true) => {}
            Ok(false) => return sh.fail("MQTT subscriber: end of stream".into()),
            Err(e) => return sh.fail(format!("MQTT subscriber: {e}")),
        }
    }
}

/// Publishes at `rate` for `warmup` then `measure`, then waits for the stragglers.
pub async fn point(
    s: &mut Setup,
    broker: &Broker,
    rate: u64,
    warmup: Duration,
    measure: Duration,
) -> io::Result<Point> {
    let sh = s.shared.clone();
    let subs = s.subs as u64;
    let p = &mut s.publisher;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // At most 20 ms of messages in one burst, so a stall shows as a lower rate.
    let burst = (rate / 50).max(1);
    let start = Instant::now();
    let mut base = (start, p.seq);
    let mut measuring = false;
    let mut cpu0 = broker.cpu();
    let self_cpu = || switchboard_bench::host::cpu_time("/proc/self/stat");
    let mut client0 = self_cpu();
    let mut machine0 = switchboard_bench::host::machine_busy();
    let mut measure_start = start;
    let mut aborted = false;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if !measuring && now >= start + warmup {
            measuring = true;
            sh.phase_start.set(p.seq);
            sh.received.set(0);
            sh.lagged.set(0);
            sh.samples.borrow_mut().clear();
            cpu0 = broker.cpu();
            client0 = self_cpu();
            machine0 = switchboard_bench::host::machine_busy();
            measure_start = now;
            base = (now, p.seq);
        }
        if measuring {
            if now >= measure_start + measure {
                break;
            }
            let outstanding = (p.seq - sh.phase_start.get()) * subs - sh.received.get();
            if outstanding > MAX_BACKLOG.max(subs * 1000) {
                aborted = true;
                break;
            }
        }
        let due = base.1 + (now.duration_since(base.0).as_secs_f64() * rate as f64) as u64;
        let n = due.saturating_sub(p.seq).min(burst);
        if n == 0 {
            continue;
        }
        p.send(n).await?;
    }
    let end_pub = Instant::now();
    let published = p.seq - sh.phase_start.get();
    let achieved = published as f64 / end_pub.duration_since(measure_start).as_secs_f64();
    let expected = published * subs;
    // Stragglers: until everything arrived, or nothing came for 1 s (10 s at most).
    let mut last = (sh.received.get(), Instant::now());
    while sh.received.get() < expected && !aborted {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let r = sh.received.get();
        if r != last.0 {
            last = (r, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        if end_pub.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let drain = last.1.saturating_duration_since(end_pub);
    let wall = last
        .1
        .max(end_pub)
        .duration_since(measure_start)
        .as_secs_f64();
    let cpu = (broker.cpu().saturating_sub(cpu0)).as_secs_f64() / wall;
    let client_cpu = (self_cpu().saturating_sub(client0)).as_secs_f64() / wall;
    let machine =
        (switchboard_bench::host::machine_busy().saturating_sub(machine0)).as_secs_f64() / wall;
    let other_cpu = (machine - cpu - client_cpu).max(0.0);
    let mut samples = std::mem::take(&mut *sh.samples.borrow_mut());
    samples.sort_unstable();
    let point = Point {
        rate,
        achieved,
        expected,
        received: sh.received.get().min(expected),
        lagged: sh.lagged.get(),
        p50_us: percentile_us(&samples, 50),
        p99_us: percentile_us(&samples, 99),
        max_us: samples.last().map(|&v| v as f64 / 1e3),
        drain,
        aborted,
        broker_cpu: cpu,
        client_cpu,
        other_cpu,
        broker_rss_mib: broker.rss_mib(),
    };
    // Late messages of this point must not count in the next one.
    sh.phase_start.set(u64::MAX);
    Ok(point)
}
