//! The DHCPv4 client state machine (RFC 2131 section 4.4), without I/O.
//!
//! The machine is fed [`Event`]s with the current time and answers with
//! [`Action`]s for the caller to carry out; [`Client::deadline`] says when to
//! feed it the next [`Event::Timer`]. Time is an input, so every path —
//! backoff, renewal at T1, rebinding at T2, expiry — is tested without
//! waiting.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::Message;

use super::packet::{self, Identity, Lease, Reply, RequestKind, INFINITE};

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255 from 0.0.0.0, to every server on the link.
    Broadcast,
    /// To one server, from the leased address (renewal).
    Unicast(Ipv4Addr),
}

/// A lease in use, and when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// What the server granted.
    pub lease: Lease,
    /// When the request that obtained it was sent: the lease counts from there.
    pub acquired: Instant,
}

impl Binding {
    fn after(&self, secs: u32) -> Option<Instant> {
        (secs != INFINITE)
            .then(|| self.acquired.checked_add(Duration::from_secs(secs.into())))
            .flatten()
    }

    /// When to renew (T1); `None` for an infinite lease.
    pub fn t1(&self) -> Option<Instant> {
        self.after(self.lease.t1_secs)
    }

    /// When to rebind (T2); `None` for an infinite lease.
    pub fn t2(&self) -> Option<Instant> {
        self.after(self.lease.t2_secs)
    }

    /// When the lease runs out; `None` for an infinite lease.
    pub fn expiry(&self) -> Option<Instant> {
        self.after(self.lease.lease_secs)
    }

    /// What is left of the lease at `now` (`None`: infinite).
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.expiry().map(|e| e.saturating_duration_since(now))
    }

    /// Whether the lease is still valid at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        self.expiry().is_none_or(|e| e > now)
    }
}

/// Something the caller must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a message.
    Send(Message, Destination),
    /// Put the lease on the interface (address with its lifetime, routes,
    /// MTU, DNS, host name) and remember it for the next start.
    Configure(Binding),
    /// Take the lease's address and routes off the interface.
    Deconfigure(Lease),
    /// Forget the remembered lease: it is no longer ours.
    Forget,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The timer from [`Client::deadline`] fired.
    Timer,
    /// A checked reply arrived.
    Reply(Reply),
    /// The link lost its carrier.
    LinkDown,
    /// The link has carrier again.
    LinkUp,
}

/// RFC 2131 figure 5, less the transient INIT and INIT-REBOOT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started, or waiting for the link.
    Stopped,
    /// DISCOVER sent, waiting for an OFFER.
    Selecting,
    /// REQUEST for an offer sent, waiting for the ACK.
    Requesting,
    /// REQUEST for a remembered lease sent, waiting for ACK or NAK.
    Rebooting,
    /// Lease configured; waiting for T1.
    Bound,
    /// REQUEST unicast to the server after T1.
    Renewing,
    /// REQUEST broadcast after T2.
    Rebinding,
    /// DECLINE sent for an address another host uses; DISCOVER again at
    /// the deadline.
    Declined,
}

/// Retransmissions of a REQUEST for an offer before starting over.
const REQUEST_TRIES: u32 = 4;
/// Retransmissions of an INIT-REBOOT REQUEST before falling back.
const REBOOT_TRIES: u32 = 1;
/// Longest wait between retransmissions (RFC 2131 section 4.1).
const MAX_BACKOFF: Duration = Duration::from_secs(64);
/// Shortest wait between retransmissions in RENEWING and REBINDING.
const MIN_RENEW_WAIT: Duration = Duration::from_secs(4);
/// Wait after a DECLINE before DISCOVER, doubled for each further DECLINE
/// in a row up to [`MAX_DECLINE_WAIT`]. RFC 2131 section 4.4.1 asks for
/// ten seconds; the boot waits on this, and a server that was told an
/// address is taken offers another one, so the first retry comes sooner
/// and only repeated conflicts (a loop) back off to the RFC's figure.
const DECLINE_WAIT: Duration = Duration::from_secs(1);
/// Longest wait after a DECLINE.
const MAX_DECLINE_WAIT: Duration = Duration::from_secs(10);
/// How long an address found taken is not configured again: a server that
/// offers it once more (dnsmasq may, when its next pick hashes to the same
/// address) is told again with a DECLINE, without the address touching the
/// link.
const DECLINED_MEMORY: Duration = Duration::from_secs(60);

/// One interface's DHCP client.
#[derive(Debug)]
pub struct Client {
    id: Identity,
    state: State,
    xid: u32,
    rng: u64,
    /// When the current exchange started (the `secs` field, lease start).
    exchange_start: Instant,
    /// Retransmissions so far in this exchange.
    attempt: u32,
    deadline: Option<Instant>,
    offer: Option<Lease>,
    binding: Option<Binding>,
    /// The lease an INIT-REBOOT asks for.
    remembered: Option<Binding>,
    /// DECLINEs since the last lease that was used.
    declines: u32,
    /// Addresses found taken, and when.
    declined: Vec<(Ipv4Addr, Instant)>,
}

impl Client {
    /// A stopped client; `seed` feeds transaction ids and jitter.
    pub fn new(id: Identity, seed: u64) -> Self {
        Client {
            id,
            state: State::Stopped,
            xid: 0,
            rng: seed | 1,
            exchange_start: Instant::now(),
            attempt: 0,
            deadline: None,
            offer: None,
            binding: None,
            remembered: None,
            declines: 0,
            declined: Vec::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The lease in use, if any.
    pub fn binding(&self) -> Option<&Binding> {
        self.binding.as_ref()
    }

    /// When to deliver the next [`Event::Timer`].
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Starts the exchange: INIT-REBOOT with `remembered` when given (a lease
    /// from a previous run, possibly still on the interface), else INIT.
    pub fn start(&mut self, now: Instant, remembered: Option<Binding>) -> Vec<Action> {
        self.remembered = remembered;
        let mut out = Vec::new();
        self.begin(now, &mut out);
        out
    }

    /// Gives the lease back (DHCPRELEASE) and stops, for a clean shutdown
    /// that is asked to release.
    pub fn release(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(b) = self.binding.take() {
            let xid = self.next_xid();
            out.push(Action::Send(
                packet::release(&self.id, xid, b.lease.server, b.lease.address),
                Destination::Unicast(b.lease.server),
            ));
            out.push(Action::Deconfigure(b.lease));
            out.push(Action::Forget);
        }
        self.state = State::Stopped;
        self.deadline = None;
        out
    }

    /// The lease just bound (by the last [`Action::Configure`]) belongs to
    /// another host, as an ARP probe showed: tells the server with
    /// DHCPDECLINE, drops the lease, and starts over with DISCOVER after a
    /// short wait (see [`DECLINE_WAIT`]). The probe runs while the address
    /// is already configured, so the caller takes it off the link first;
    /// no [`Action::Deconfigure`] follows.
    pub fn decline(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(b) = self.binding.take() else {
            return out;
        };
        out.push(Action::Send(
            packet::decline(&self.id, self.xid, b.lease.server, b.lease.address),
            Destination::Broadcast,
        ));
        self.remembered = None;
        self.offer = None;
        self.declined.retain(|(a, _)| *a != b.lease.address);
        self.declined.push((b.lease.address, now));
        out.push(Action::Forget);
        self.wait_after_decline(now);
        out
    }

    /// After a DECLINE: DISCOVER again after a wait that grows with each
    /// DECLINE in a row.
    fn wait_after_decline(&mut self, now: Instant) {
        let wait = DECLINE_WAIT
            .saturating_mul(1 << self.declines.min(4))
            .min(MAX_DECLINE_WAIT);
        self.declines += 1;
        self.state = State::Declined;
        self.deadline = Some(now + wait);
    }

    /// Whether `addr` was found taken within [`DECLINED_MEMORY`].
    fn recently_declined(&mut self, now: Instant, addr: Ipv4Addr) -> bool {
        self.declined
            .retain(|(_, at)| now.saturating_duration_since(*at) < DECLINED_MEMORY);
        self.declined.iter().any(|(a, _)| *a == addr)
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Timer => self.on_timer(now, &mut out),
            Event::Reply(reply) => self.on_reply(now, reply, &mut out),
            Event::LinkDown => {
                // Keep the lease (and the address) while it is valid: a cable
                // pulled for a moment must not cost the address.
                if let Some(b) = self.binding.take() {
                    self.remembered = Some(b.clone());
                    self.binding = Some(b);
                }
                self.state = State::Stopped;
                self.deadline = self.binding.as_ref().and_then(Binding::expiry);
            }
            Event::LinkUp => match self.state {
                State::Stopped => {
                    if let Some(b) = self.binding.clone() {
                        self.remembered = Some(b);
                    }
                    self.begin(now, &mut out);
                }
                // Whatever was sent before the carrier came is likely lost:
                // start again now rather than after the backoff.
                State::Selecting | State::Rebooting => self.begin(now, &mut out),
                State::Declined => {}
                _ => {}
            },
        }
        out
    }

    fn begin(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.remembered.clone() {
            Some(b) => {
                self.new_exchange(now, State::Rebooting);
                let xid = self.xid;
                out.push(Action::Send(
                    packet::request(
                        &self.id,
                        xid,
                        0,
                        RequestKind::InitReboot {
                            addr: b.lease.address,
                        },
                    ),
                    Destination::Broadcast,
                ));
                self.deadline = Some(now + self.backoff());
            }
            None => self.discover(now, out),
        }
    }

    fn discover(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.new_exchange(now, State::Selecting);
        self.offer = None;
        let requested = self.binding.as_ref().map(|b| b.lease.address);
        out.push(Action::Send(
            packet::discover(&self.id, self.xid, 0, requested),
            Destination::Broadcast,
        ));
        self.deadline = Some(now + self.backoff());
    }

    fn new_exchange(&mut self, now: Instant, state: State) {
        self.state = state;
        self.xid = self.next_xid();
        self.exchange_start = now;
        self.attempt = 0;
    }

    fn secs(&self, now: Instant) -> u16 {
        now.saturating_duration_since(self.exchange_start)
            .as_secs()
            .min(u64::from(u16::MAX)) as u16
    }

    /// Drops the current lease (expired or refused).
    fn lose_binding(&mut self, out: &mut Vec<Action>) {
        if let Some(b) = self.binding.take() {
            out.push(Action::Deconfigure(b.lease));
        }
        self.remembered = None;
        out.push(Action::Forget);
    }

    fn bind(&mut self, now: Instant, mut lease: Lease, out: &mut Vec<Action>) {
        if lease.server.is_unspecified() {
            // An ACK without option 54: keep talking to the server we know.
            lease.server = self
                .offer
                .as_ref()
                .map(|o| o.server)
                .or(self.binding.as_ref().map(|b| b.lease.server))
                .or(self.remembered.as_ref().map(|b| b.lease.server))
                .unwrap_or(Ipv4Addr::BROADCAST);
        }
        if let Some(old) = self.binding.take() {
            if old.lease.address != lease.address || old.lease.prefix != lease.prefix {
                out.push(Action::Deconfigure(old.lease));
            }
        }
        let binding = Binding {
            lease,
            acquired: self.exchange_start.min(now),
        };
        self.state = State::Bound;
        self.offer = None;
        self.remembered = None;
        self.deadline = binding.t1();
        self.binding = Some(binding.clone());
        out.push(Action::Configure(binding));
    }

    fn on_reply(&mut self, now: Instant, reply: Reply, out: &mut Vec<Action>) {
        if reply.xid() != self.xid {
            log::debug!(target: "netd::dhcp", "ignoring a reply for transaction {:#x}", reply.xid());
            return;
        }
        match (self.state, reply) {
            (State::Selecting, Reply::Offer { lease, .. })
                if self.recently_declined(now, lease.address) =>
            {
                log::warn!(
                    target: "netd::dhcp",
                    "{} offered {} again, which another host uses; declining it without configuring it",
                    lease.server,
                    lease.address
                );
                out.push(Action::Send(
                    packet::decline(&self.id, self.xid, lease.server, lease.address),
                    Destination::Broadcast,
                ));
                self.wait_after_decline(now);
            }
            (State::Selecting, Reply::Offer { lease, .. }) => {
                let kind = RequestKind::Selecting {
                    server: lease.server,
                    addr: lease.address,
                };
                self.offer = Some(lease);
                // Same xid (RFC 2131 section 4.4.1); the REQUEST is a new
                // exchange for the retransmission count.
                self.state = State::Requesting;
                self.attempt = 0;
                out.push(Action::Send(
                    packet::request(&self.id, self.xid, self.secs(now), kind),
                    Destination::Broadcast,
                ));
                self.deadline = Some(now + self.backoff());
            }
            (
                State::Requesting | State::Rebooting | State::Renewing | State::Rebinding,
                Reply::Ack { lease, .. },
            ) => {
                self.bind(now, lease, out);
            }
            (State::Requesting, Reply::Nak { server, .. })
                if server.is_some() && server != self.offer.as_ref().map(|o| o.server) =>
            {
                log::debug!(target: "netd::dhcp", "ignoring a NAK from a server we did not ask");
            }
            (
                State::Requesting | State::Rebooting | State::Renewing | State::Rebinding,
                Reply::Nak { .. },
            ) => {
                // A remembered lease may still be on the interface from a
                // previous run: it is not ours any more.
                if self.binding.is_none() {
                    if let Some(b) = self.remembered.take() {
                        out.push(Action::Deconfigure(b.lease));
                    }
                }
                self.lose_binding(out);
                self.discover(now, out);
            }
            (state, reply) => {
                log::debug!(target: "netd::dhcp", "ignoring {} in state {state:?}", kind_name(&reply));
            }
        }
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.deadline.is_some_and(|d| d > now) {
            return;
        }
        match self.state {
            State::Stopped => {
                // Only armed with a lease kept over a link-down.
                if self.binding.as_ref().is_some_and(|b| !b.valid_at(now)) {
                    self.lose_binding(out);
                }
                self.deadline = None;
            }
            State::Selecting => {
                self.attempt += 1;
                let requested = self.binding.as_ref().map(|b| b.lease.address);
                out.push(Action::Send(
                    packet::discover(&self.id, self.xid, self.secs(now), requested),
                    Destination::Broadcast,
                ));
                self.deadline = Some(now + self.backoff());
            }
            State::Requesting => {
                self.attempt += 1;
                match (&self.offer, self.attempt <= REQUEST_TRIES) {
                    (Some(offer), true) => {
                        let kind = RequestKind::Selecting {
                            server: offer.server,
                            addr: offer.address,
                        };
                        out.push(Action::Send(
                            packet::request(&self.id, self.xid, self.secs(now), kind),
                            Destination::Broadcast,
                        ));
                        self.deadline = Some(now + self.backoff());
                    }
                    _ => self.discover(now, out),
                }
            }
            State::Rebooting => {
                self.attempt += 1;
                let remembered = self.remembered.clone();
                match remembered {
                    Some(b) if self.attempt <= REBOOT_TRIES => {
                        out.push(Action::Send(
                            packet::request(
                                &self.id,
                                self.xid,
                                self.secs(now),
                                RequestKind::InitReboot {
                                    addr: b.lease.address,
                                },
                            ),
                            Destination::Broadcast,
                        ));
                        self.deadline = Some(now + self.backoff());
                    }
                    // No server answers: RFC 2131 section 3.2 lets us use
                    // the remembered lease for the rest of its time.
                    Some(b) if b.valid_at(now) => {
                        self.remembered = None;
                        self.state = State::Bound;
                        self.deadline = b.t1().map(|t1| t1.max(now));
                        self.binding = Some(b.clone());
                        out.push(Action::Configure(b));
                    }
                    Some(b) => {
                        self.remembered = None;
                        out.push(Action::Deconfigure(b.lease));
                        out.push(Action::Forget);
                        self.discover(now, out);
                    }
                    None => self.discover(now, out),
                }
            }
            State::Declined => self.discover(now, out),
            State::Bound | State::Renewing | State::Rebinding => self.on_lease_timer(now, out),
        }
    }

    fn on_lease_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        // The lease lived to T1: it was not declined.
        self.declines = 0;
        let Some(b) = self.binding.clone() else {
            self.discover(now, out);
            return;
        };
        if b.expiry().is_some_and(|e| e <= now) {
            log::warn!(target: "netd::dhcp", "lease of {} expired", b.lease.address);
            self.lose_binding(out);
            self.discover(now, out);
            return;
        }
        let Some(t2) = b.t2() else {
            self.deadline = None;
            return;
        };
        let (state, dest, limit) = if now < t2 {
            (State::Renewing, Destination::Unicast(b.lease.server), t2)
        } else {
            (
                State::Rebinding,
                Destination::Broadcast,
                b.expiry().unwrap_or(t2),
            )
        };
        if self.state != state {
            self.new_exchange(now, state);
        }
        let kind = match state {
            State::Renewing => RequestKind::Renewing {
                addr: b.lease.address,
            },
            _ => RequestKind::Rebinding {
                addr: b.lease.address,
            },
        };
        out.push(Action::Send(
            packet::request(&self.id, self.xid, self.secs(now), kind),
            dest,
        ));
        // RFC 2131 section 4.4.5: wait half the time left, but not too little.
        let left = limit.saturating_duration_since(now);
        let wait = (left / 2).max(MIN_RENEW_WAIT).min(left);
        self.deadline = Some(now + wait);
    }

    /// The wait after the current attempt: 1, 2, 4, ... 64 s, each ±25% (at
    /// most ±1 s, RFC 2131 section 4.1). The first retransmission comes
    /// after about a second, so a DISCOVER lost while the link settles
    /// costs little at boot.
    fn backoff(&mut self) -> Duration {
        let base = Duration::from_secs(1u64 << self.attempt.min(6)).min(MAX_BACKOFF);
        let spread = (base / 4).min(Duration::from_secs(1));
        let r = self.next_random();
        let spread_ms = spread.as_millis() as u64;
        let offset = if spread_ms == 0 {
            0
        } else {
            r % (2 * spread_ms + 1)
        };
        base - spread + Duration::from_millis(offset)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: enough for transaction ids and jitter.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn next_xid(&mut self) -> u32 {
        (self.next_random() >> 32) as u32
    }
}

fn kind_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Offer { .. } => "an OFFER",
        Reply::Ack { .. } => "an ACK",
        Reply::Nak { .. } => "a NAK",
    }
}

#[cfg(test)]
mod tests {
    use dhcproto::v4::{DhcpOption, MessageType, OptionCode};

    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);

    fn client() -> Client {
        Client::new(
            Identity {
                mac: MAC,
                hostname: None,
            },
            42,
        )
    }

    fn lease(addr: Ipv4Addr, secs: u32) -> Lease {
        Lease {
            address: addr,
            prefix: 24,
            server: SERVER,
            lease_secs: secs,
            t1_secs: secs / 2,
            t2_secs: secs / 8 * 7,
            routers: vec![SERVER],
            classless_routes: vec![],
            dns: vec![SERVER],
            domains: vec![],
            hostname: None,
            mtu: None,
            warnings: vec![],
        }
    }

    fn sent(actions: &[Action]) -> Vec<(MessageType, Destination, u32, Message)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(m, d) => Some((m.opts().msg_type().unwrap(), *d, m.xid(), m.clone())),
                _ => None,
            })
            .collect()
    }

    fn only_send(actions: &[Action]) -> (MessageType, Destination, u32, Message) {
        let s = sent(actions);
        assert_eq!(s.len(), 1, "{actions:?}");
        s.into_iter().next().unwrap()
    }

    /// DISCOVER → OFFER → REQUEST → ACK; returns the client in BOUND at t0.
    fn bound(t0: Instant, secs: u32) -> Client {
        let mut c = client();
        let (kind, dest, xid, _) = only_send(&c.start(t0, None));
        assert_eq!(
            (kind, dest),
            (MessageType::Discover, Destination::Broadcast)
        );
        assert_eq!(c.state(), State::Selecting);
        let a = c.handle(
            t0,
            Event::Reply(Reply::Offer {
                xid,
                lease: lease(ADDR, secs),
            }),
        );
        let (kind, dest, rxid, msg) = only_send(&a);
        assert_eq!(
            (kind, dest, rxid),
            (MessageType::Request, Destination::Broadcast, xid)
        );
        assert_eq!(
            msg.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            msg.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDR))
        );
        let a = c.handle(
            t0,
            Event::Reply(Reply::Ack {
                xid,
                lease: lease(ADDR, secs),
            }),
        );
        assert_eq!(
            a,
            [Action::Configure(Binding {
                lease: lease(ADDR, secs),
                acquired: t0
            })]
        );
        assert_eq!(c.state(), State::Bound);
        assert_eq!(
            c.deadline(),
            Some(t0 + Duration::from_secs(u64::from(secs / 2)))
        );
        c
    }

    #[test]
    fn full_exchange_renew_rebind_expire() {
        let t0 = Instant::now();
        let mut c = bound(t0, 120);
        // T1: unicast renewal.
        let t1 = t0 + Duration::from_secs(60);
        let (kind, dest, xid, msg) = only_send(&c.handle(t1, Event::Timer));
        assert_eq!(
            (kind, dest),
            (MessageType::Request, Destination::Unicast(SERVER))
        );
        assert_eq!(msg.ciaddr(), ADDR);
        assert_eq!(c.state(), State::Renewing);
        // Next retransmission: half of the 45 s to T2.
        assert_eq!(c.deadline(), Some(t1 + Duration::from_millis(22_500)));
        // Renewal ACK restarts the lease from the time of the request.
        let a = c.handle(
            t1 + Duration::from_secs(1),
            Event::Reply(Reply::Ack {
                xid,
                lease: lease(ADDR, 120),
            }),
        );
        assert_eq!(
            a,
            [Action::Configure(Binding {
                lease: lease(ADDR, 120),
                acquired: t1
            })]
        );
        assert_eq!(c.deadline(), Some(t1 + Duration::from_secs(60)));
        // The server goes away: renew, then rebind at T2, then expire.
        let t1b = t1 + Duration::from_secs(60);
        only_send(&c.handle(t1b, Event::Timer));
        let t2 = t1 + Duration::from_secs(105);
        let mut now = t1b;
        let mut rebinding_sent = 0;
        while c.state() != State::Rebinding {
            now = c.deadline().unwrap();
            assert!(now <= t2, "renewing past T2");
            c.handle(now, Event::Timer);
        }
        assert_eq!(now, t2);
        while let Some(d) = c.deadline() {
            if c.state() != State::Rebinding {
                break;
            }
            assert!(d <= t1 + Duration::from_secs(120));
            let a = c.handle(d, Event::Timer);
            if let [Action::Send(_, Destination::Broadcast)] = a.as_slice() {
                rebinding_sent += 1;
            } else {
                assert_eq!(a[0], Action::Deconfigure(lease(ADDR, 120)));
                assert_eq!(a[1], Action::Forget);
                assert_eq!(only_send(&a[2..]).0, MessageType::Discover);
                break;
            }
        }
        assert!(rebinding_sent >= 2, "{rebinding_sent}");
        assert_eq!(c.state(), State::Selecting);
        assert!(c.binding().is_none());
    }

    #[test]
    fn discover_backs_off_exponentially() {
        let t0 = Instant::now();
        let mut c = client();
        let (_, _, xid, _) = only_send(&c.start(t0, None));
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            let d = c.deadline().unwrap();
            waits.push((d - now).as_secs_f64());
            now = d;
            let (kind, _, x, msg) = only_send(&c.handle(now, Event::Timer));
            assert_eq!((kind, x), (MessageType::Discover, xid));
            assert_eq!(u64::from(msg.secs()), (now - t0).as_secs());
        }
        let bases = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 64.0, 64.0];
        for (w, b) in waits.iter().zip(bases) {
            let spread = (b / 4.0f64).min(1.0);
            assert!((w - b).abs() <= spread + 0.001, "{waits:?}");
        }
        // An early timer does nothing.
        assert!(c.handle(now, Event::Timer).is_empty());
    }

    #[test]
    fn foreign_and_stray_replies_are_ignored() {
        let t0 = Instant::now();
        let mut c = client();
        let (_, _, xid, _) = only_send(&c.start(t0, None));
        let stray = Reply::Offer {
            xid: xid.wrapping_add(1),
            lease: lease(ADDR, 60),
        };
        assert!(c.handle(t0, Event::Reply(stray)).is_empty());
        let early_ack = Reply::Ack {
            xid,
            lease: lease(ADDR, 60),
        };
        assert!(c.handle(t0, Event::Reply(early_ack)).is_empty());
        assert_eq!(c.state(), State::Selecting);
    }

    #[test]
    fn nak_while_requesting_starts_over() {
        let t0 = Instant::now();
        let mut c = client();
        let (_, _, xid, _) = only_send(&c.start(t0, None));
        c.handle(
            t0,
            Event::Reply(Reply::Offer {
                xid,
                lease: lease(ADDR, 60),
            }),
        );
        // A NAK from another server is not for us.
        let other = Reply::Nak {
            xid,
            server: Some(Ipv4Addr::new(10, 0, 0, 2)),
            message: None,
        };
        assert!(c.handle(t0, Event::Reply(other)).is_empty());
        let a = c.handle(
            t0,
            Event::Reply(Reply::Nak {
                xid,
                server: Some(SERVER),
                message: None,
            }),
        );
        assert_eq!(a[0], Action::Forget);
        let (kind, _, new_xid, _) = only_send(&a[1..]);
        assert_eq!(kind, MessageType::Discover);
        assert_ne!(new_xid, xid);
    }

    #[test]
    fn requesting_gives_up_after_retries() {
        let t0 = Instant::now();
        let mut c = client();
        let (_, _, xid, _) = only_send(&c.start(t0, None));
        c.handle(
            t0,
            Event::Reply(Reply::Offer {
                xid,
                lease: lease(ADDR, 60),
            }),
        );
        for _ in 0..REQUEST_TRIES {
            let d = c.deadline().unwrap();
            assert_eq!(
                only_send(&c.handle(d, Event::Timer)).0,
                MessageType::Request
            );
        }
        let d = c.deadline().unwrap();
        assert_eq!(
            only_send(&c.handle(d, Event::Timer)).0,
            MessageType::Discover
        );
        assert_eq!(c.state(), State::Selecting);
    }

    #[test]
    fn init_reboot_ack_nak_and_silence() {
        let t0 = Instant::now();
        let remembered = Binding {
            lease: lease(ADDR, 3600),
            acquired: t0 - Duration::from_secs(100),
        };
        // ACK: bound again.
        let mut c = client();
        let (kind, dest, xid, msg) = only_send(&c.start(t0, Some(remembered.clone())));
        assert_eq!((kind, dest), (MessageType::Request, Destination::Broadcast));
        assert_eq!(msg.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            msg.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDR))
        );
        assert!(msg.opts().get(OptionCode::ServerIdentifier).is_none());
        let a = c.handle(
            t0,
            Event::Reply(Reply::Ack {
                xid,
                lease: lease(ADDR, 3600),
            }),
        );
        assert!(matches!(a.as_slice(), [Action::Configure(_)]));
        // NAK (the subnet changed): the old address comes off, then INIT.
        let mut c = client();
        let (_, _, xid, _) = only_send(&c.start(t0, Some(remembered.clone())));
        let a = c.handle(
            t0,
            Event::Reply(Reply::Nak {
                xid,
                server: Some(SERVER),
                message: None,
            }),
        );
        assert_eq!(a[0], Action::Deconfigure(lease(ADDR, 3600)));
        assert_eq!(a[1], Action::Forget);
        let (kind, _, _, msg) = only_send(&a[2..]);
        assert_eq!(kind, MessageType::Discover);
        assert!(msg.opts().get(OptionCode::RequestedIpAddress).is_none());
        // Silence: the remembered lease is used for the rest of its time.
        let mut c = client();
        only_send(&c.start(t0, Some(remembered.clone())));
        let mut now = t0;
        let mut configured = None;
        for _ in 0..=REBOOT_TRIES {
            now = c.deadline().unwrap();
            for a in c.handle(now, Event::Timer) {
                if let Action::Configure(b) = a {
                    configured = Some(b);
                }
            }
        }
        assert_eq!(configured, Some(remembered.clone()));
        assert!(
            now - t0 < Duration::from_secs(5),
            "fallback took {:?}",
            now - t0
        );
        assert_eq!(c.state(), State::Bound);
        assert_eq!(c.deadline(), remembered.t1());
        // Silence with an expired remembered lease: deconfigure, then INIT.
        let mut c = client();
        let old = Binding {
            lease: lease(ADDR, 60),
            acquired: t0 - Duration::from_secs(100),
        };
        only_send(&c.start(t0, Some(old)));
        let mut last = Vec::new();
        for _ in 0..=REBOOT_TRIES {
            let d = c.deadline().unwrap();
            last = c.handle(d, Event::Timer);
        }
        assert_eq!(last[0], Action::Deconfigure(lease(ADDR, 60)));
        assert_eq!(c.state(), State::Selecting);
    }

    #[test]
    fn nak_while_renewing_deconfigures() {
        let t0 = Instant::now();
        let mut c = bound(t0, 120);
        let (_, _, xid, _) = only_send(&c.handle(t0 + Duration::from_secs(60), Event::Timer));
        let a = c.handle(
            t0 + Duration::from_secs(61),
            Event::Reply(Reply::Nak {
                xid,
                server: Some(SERVER),
                message: None,
            }),
        );
        assert_eq!(a[0], Action::Deconfigure(lease(ADDR, 120)));
        assert_eq!(a[1], Action::Forget);
        assert_eq!(only_send(&a[2..]).0, MessageType::Discover);
    }

    #[test]
    fn rebind_to_another_address_replaces_the_old_one() {
        let t0 = Instant::now();
        let mut c = bound(t0, 120);
        let t2 = t0 + Duration::from_secs(105);
        let mut now = t0 + Duration::from_secs(60);
        let mut last = c.handle(now, Event::Timer);
        while c.state() != State::Rebinding {
            now = c.deadline().unwrap();
            last = c.handle(now, Event::Timer);
        }
        assert_eq!(now, t2);
        let (_, dest, xid, msg) = only_send(&last);
        assert_eq!(msg.ciaddr(), ADDR);
        assert_eq!(dest, Destination::Broadcast);
        let other = Ipv4Addr::new(10, 0, 0, 77);
        let a = c.handle(
            t2,
            Event::Reply(Reply::Ack {
                xid,
                lease: lease(other, 120),
            }),
        );
        assert_eq!(a[0], Action::Deconfigure(lease(ADDR, 120)));
        assert!(matches!(&a[1], Action::Configure(b) if b.lease.address == other));
    }

    #[test]
    fn link_down_keeps_the_lease_and_up_verifies_it() {
        let t0 = Instant::now();
        let mut c = bound(t0, 120);
        assert!(c
            .handle(t0 + Duration::from_secs(5), Event::LinkDown)
            .is_empty());
        assert_eq!(c.state(), State::Stopped);
        assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(120)));
        let (kind, _, _, msg) = only_send(&c.handle(t0 + Duration::from_secs(10), Event::LinkUp));
        assert_eq!(kind, MessageType::Request);
        assert_eq!(
            msg.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDR))
        );
        assert_eq!(c.state(), State::Rebooting);
        // Down past expiry: the address goes.
        let mut c = bound(t0, 120);
        c.handle(t0 + Duration::from_secs(5), Event::LinkDown);
        let a = c.handle(t0 + Duration::from_secs(120), Event::Timer);
        assert_eq!(a, [Action::Deconfigure(lease(ADDR, 120)), Action::Forget]);
        assert_eq!(
            only_send(&c.handle(t0 + Duration::from_secs(130), Event::LinkUp)).0,
            MessageType::Discover
        );
    }

    #[test]
    fn carrier_while_selecting_resends_at_once() {
        let t0 = Instant::now();
        let mut c = client();
        let (_, _, xid, _) = only_send(&c.start(t0, None));
        let (kind, _, new_xid, _) =
            only_send(&c.handle(t0 + Duration::from_millis(10), Event::LinkUp));
        assert_eq!(kind, MessageType::Discover);
        assert_ne!(xid, new_xid);
    }

    #[test]
    fn infinite_lease_never_renews() {
        let t0 = Instant::now();
        let mut c = client();
        let (_, _, xid, _) = only_send(&c.start(t0, None));
        let mut forever = lease(ADDR, 60);
        forever.lease_secs = INFINITE;
        forever.t1_secs = INFINITE;
        forever.t2_secs = INFINITE;
        c.handle(
            t0,
            Event::Reply(Reply::Offer {
                xid,
                lease: forever.clone(),
            }),
        );
        c.handle(
            t0,
            Event::Reply(Reply::Ack {
                xid,
                lease: forever,
            }),
        );
        assert_eq!(c.state(), State::Bound);
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn decline_then_discover_after_a_growing_wait() {
        let t0 = Instant::now();
        let mut c = bound(t0, 120);
        let a = c.decline(t0);
        let (kind, dest, _, msg) = only_send(&a);
        assert_eq!((kind, dest), (MessageType::Decline, Destination::Broadcast));
        assert_eq!(
            msg.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDR))
        );
        assert_eq!(
            msg.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(msg.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(a[1], Action::Forget);
        assert!(c.binding().is_none());
        assert_eq!(c.state(), State::Declined);
        assert_eq!(c.deadline(), Some(t0 + DECLINE_WAIT));
        // Carrier news does not cut the wait short.
        assert!(c.handle(t0, Event::LinkUp).is_empty());
        let t1 = t0 + DECLINE_WAIT;
        let (kind, _, xid, msg) = only_send(&c.handle(t1, Event::Timer));
        assert_eq!(kind, MessageType::Discover);
        assert!(msg.opts().get(OptionCode::RequestedIpAddress).is_none());
        // A second conflict in a row (another address) waits twice as long.
        let other = Ipv4Addr::new(10, 0, 0, 51);
        c.handle(
            t1,
            Event::Reply(Reply::Offer {
                xid,
                lease: lease(other, 120),
            }),
        );
        c.handle(
            t1,
            Event::Reply(Reply::Ack {
                xid,
                lease: lease(other, 120),
            }),
        );
        assert_eq!(c.state(), State::Bound);
        c.decline(t1);
        assert_eq!(c.deadline(), Some(t1 + 2 * DECLINE_WAIT));
        // The same address offered again is declined at once, never
        // requested or configured; the wait grows again.
        let t2 = t1 + 2 * DECLINE_WAIT;
        let (kind, _, xid, _) = only_send(&c.handle(t2, Event::Timer));
        assert_eq!(kind, MessageType::Discover);
        let a = c.handle(
            t2,
            Event::Reply(Reply::Offer {
                xid,
                lease: lease(ADDR, 120),
            }),
        );
        let (kind, _, _, msg) = only_send(&a);
        assert_eq!(kind, MessageType::Decline);
        assert_eq!(
            msg.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(ADDR))
        );
        assert_eq!(c.state(), State::Declined);
        assert_eq!(c.deadline(), Some(t2 + 4 * DECLINE_WAIT));
        // Once the memory has passed, the address is usable again.
        let t3 = t2 + DECLINED_MEMORY;
        let (_, _, xid, _) = only_send(&c.handle(t3, Event::Timer));
        let (kind, _, _, _) = only_send(&c.handle(
            t3,
            Event::Reply(Reply::Offer {
                xid,
                lease: lease(ADDR, 120),
            }),
        ));
        assert_eq!(kind, MessageType::Request);
        // Nothing to decline without a lease.
        assert!(client().decline(t0).is_empty());
    }

    #[test]
    fn release_sends_and_deconfigures() {
        let t0 = Instant::now();
        let mut c = bound(t0, 120);
        let a = c.release();
        let (kind, dest, _, msg) = only_send(&a);
        assert_eq!(
            (kind, dest),
            (MessageType::Release, Destination::Unicast(SERVER))
        );
        assert_eq!(msg.ciaddr(), ADDR);
        assert_eq!(a[1], Action::Deconfigure(lease(ADDR, 120)));
    }
}
