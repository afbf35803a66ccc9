//! The baseline: a minimal broadcast server on tokio-tungstenite, run by this same
//! binary in a child process (see `procs::BASELINE_ENV`).
//!
//! It is what a careful afternoon's work gives: one task per connection, a tokio
//! `broadcast` channel, each published frame serialised once and shared by every
//! subscriber, writes batched per wake-up, and tungstenite's read buffer at 4 KiB
//! (tungstenite 0.29 zero-fills its whole 128 KiB default before every read attempt). It speaks just
//! enough of switchboard's protocol for the bench clients: a welcome, an `ok` for
//! every request, and `msg` frames for `pub` to every connection that sent a `sub`
//! (topics are ignored: the bench uses one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

/// Frames a subscriber may fall behind before it loses the oldest (switchboard's
/// default outbound queue is the same length).
const CHANNEL: usize = 1024;

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Runs the baseline server until killed. Same runtime as switchboard's: a
/// multi-thread runtime, which has one worker when pinned to one core.
pub fn run(listen: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("baseline: cannot start the runtime");
    rt.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .expect("baseline: cannot bind");
        let addr = listener.local_addr().expect("baseline: no local address");
        eprintln!("baseline listening http={addr}");
        let (tx, _) = broadcast::channel::<Utf8Bytes>(CHANNEL);
        let seq = Arc::new(AtomicU64::new(0));
        let mut next_id = 0u64;
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, typically: wait, don't spin.
                    eprintln!("baseline: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            next_id += 1;
            let (tx, seq) = (tx.clone(), seq.clone());
            tokio::spawn(async move {
                let _ = connection(tcp, tx, seq, next_id).await;
            });
        }
    });
}

async fn connection(
    tcp: TcpStream,
    tx: broadcast::Sender<Utf8Bytes>,
    seq: Arc<AtomicU64>,
    id: u64,
) -> Result<(), WsError> {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(16 * 1024);
    let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await?;
    let client = format!("b{id}");
    ws.send(Message::text(format!(
        r#"{{"op":"welcome","client":"{client}","version":1}}"#
    )))
    .await?;
    let mut rx: Option<broadcast::Receiver<Utf8Bytes>> = None;
    loop {
        tokio::select! {
            incoming = ws.next() => {
                let Some(message) = incoming else { return Ok(()) };
                let mut subscribe = handle(&mut ws, message?, &tx, &seq, &client).await?;
                // Answer everything already buffered, then flush once.
                while let Some(Some(message)) = ws.next().now_or_never() {
                    subscribe |= handle(&mut ws, message?, &tx, &seq, &client).await?;
                }
                ws.flush().await?;
                if subscribe && rx.is_none() {
                    rx = Some(tx.subscribe());
                }
            }
            frame = recv(&mut rx) => {
                match frame {
                    Ok(frame) => {
                        ws.feed(Message::Text(frame)).await?;
                        if let Some(rx) = rx.as_mut() {
                            // Everything else already queued goes out with one flush.
                            loop {
                                match rx.try_recv() {
                                    Ok(frame) => ws.feed(Message::Text(frame)).await?,
                                    Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                                    Err(_) => break,
                                }
                            }
                        }
                        ws.flush().await?;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
}

async fn recv(
    rx: &mut Option<broadcast::Receiver<Utf8Bytes>>,
) -> Result<Utf8Bytes, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Queues the reply to one request (without flushing); true if it was a `sub`.
async fn handle(
    ws: &mut Ws,
    message: Message,
    tx: &broadcast::Sender<Utf8Bytes>,
    seq: &AtomicU64,
    client: &str,
) -> Result<bool, WsError> {
    let Message::Text(text) = message else {
        // tungstenite answers pings itself; nothing else is expected.
        return Ok(false);
    };
    let text = text.as_str();
    let op = string_field(text, r#""op":""#).unwrap_or("");
    let id = string_field(text, r#""id":""#).unwrap_or("");
    if op == "pub" {
        let topic = string_field(text, r#""topic":""#).unwrap_or("");
        let data = raw_data(text).unwrap_or("null");
        let seq = seq.fetch_add(1, Ordering::Relaxed) + 1;
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let frame = format!(
            r#"{{"op":"msg","topic":"{topic}","data":{data},"ts":{ts},"seq":{seq},"from":"{client}"}}"#
        );
        // No subscribers is not an error for a broadcast server.
        let _ = tx.send(Utf8Bytes::from(frame));
    }
    ws.feed(Message::text(format!(r#"{{"op":"ok","id":"{id}"}}"#)))
        .await?;
    Ok(op == "sub")
}

/// The value of a string field (`key` is `"name":"`), found by search: the bench's
/// requests hold no escapes.
fn string_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// The raw JSON of `data`, which the bench always sends as the last field.
fn raw_data(text: &str) -> Option<&str> {
    let start = text.find("\"data\":")? + 7;
    let end = text.rfind('}')?;
    (start < end).then(|| text[start..end].trim())
}
