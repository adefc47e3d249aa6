//! A DNS server on loopback UDP that the tests change while the proxy runs:
//! A records and SRV records (with the targets' A records in the additional
//! section), one TTL for all, and a switch that makes it answer SERVFAIL.
//! Messages are read and written with hickory-proto; a plain thread serves
//! them (no async runtime).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// One SRV record: priority, weight, port, target host name.
#[derive(Clone, Debug)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

#[derive(Default)]
struct Zone {
    a: HashMap<String, Vec<Ipv4Addr>>,
    srv: HashMap<String, Vec<Srv>>,
    ttl: u32,
}

pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    servfail: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves on a free loopback UDP port with records of `ttl` seconds.
    pub fn start(ttl: u32) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind test DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("DNS server addr");
        let zone = Arc::new(Mutex::new(Zone {
            ttl,
            ..Zone::default()
        }));
        let servfail = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (zone, servfail, stop, queries) = (
                zone.clone(),
                servfail.clone(),
                stop.clone(),
                queries.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::Relaxed);
                    let Ok(query) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let reply = answer(&query, &zone, servfail.load(Ordering::Relaxed));
                    if let Ok(bytes) = reply.to_vec() {
                        let _ = socket.send_to(&bytes, peer);
                    }
                }
            })
        };
        DnsServer {
            addr,
            zone,
            servfail,
            stop,
            queries,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the A records of `name`.
    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        let mut zone = self.zone.lock().unwrap_or_else(|e| e.into_inner());
        zone.a.insert(name.to_ascii_lowercase(), ips.to_vec());
    }

    /// Replaces the SRV records of `name`.
    pub fn set_srv(&self, name: &str, records: &[Srv]) {
        let mut zone = self.zone.lock().unwrap_or_else(|e| e.into_inner());
        zone.srv.insert(name.to_ascii_lowercase(), records.to_vec());
    }

    /// Every query answered SERVFAIL while set.
    pub fn set_servfail(&self, on: bool) {
        self.servfail.store(on, Ordering::Relaxed);
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(query: &Message, zone: &Mutex<Zone>, servfail: bool) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.iter().cloned());
    if servfail {
        reply.metadata.response_code = ResponseCode::ServFail;
        return reply;
    }
    let zone = zone.lock().unwrap_or_else(|e| e.into_inner());
    let Some(q) = query.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    let key = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let a_records = |host: &str, owner: &Name| -> Vec<Record> {
        zone.a
            .get(host)
            .map(|ips| {
                ips.iter()
                    .map(|ip| Record::from_rdata(owner.clone(), zone.ttl, RData::A(A(*ip))))
                    .collect()
            })
            .unwrap_or_default()
    };
    let known = zone.a.contains_key(&key) || zone.srv.contains_key(&key);
    match q.query_type() {
        RecordType::A => {
            reply.add_answers(a_records(&key, q.name()));
        }
        RecordType::SRV => {
            for s in zone.srv.get(&key).into_iter().flatten() {
                let Ok(target) = Name::from_ascii(format!("{}.", s.target)) else {
                    continue;
                };
                let srv = SRV::new(s.priority, s.weight, s.port, target.clone());
                reply.add_answer(Record::from_rdata(
                    q.name().clone(),
                    zone.ttl,
                    RData::SRV(srv),
                ));
                reply.add_additionals(a_records(&s.target.to_ascii_lowercase(), &target));
            }
        }
        // AAAA and the rest: no records (NOERROR, empty) for a known name.
        _ => {}
    }
    if !known {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply
}
