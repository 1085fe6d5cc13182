//! A small nftables client: the netlink messages berth needs (tables,
//! base and regular chains, rules built from payload, cmp, meta, bitwise,
//! ct, fib, immediate, nat and masq expressions), sent as one atomic batch
//! over `NETLINK_NETFILTER`. No `nft` binary and no libnftnl.
//!
//! The encoding follows libnftnl attribute by attribute; the tests compare
//! it byte for byte with what `nft --debug=mnl` sends for the same rules.
//! At the bottom, [`ruleset`] is the table a bridge needs: masquerade for
//! outbound traffic, and DNAT for published ports in prerouting and output.

use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike};

use super::ipam::{Ipv4Net, Lease, Proto};

/// What can go wrong talking to nf_tables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The netfilter netlink socket could not be used.
    #[error("cannot {what} on the nftables netlink socket")]
    Socket {
        /// The step: "open", "send the batch", "receive the answer".
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused one message of the batch (the whole batch is then
    /// discarded).
    #[error("the kernel refused to {what}{hint}")]
    Refused {
        /// The message, in nft syntax.
        what: String,
        /// A hint about the likely cause.
        hint: &'static str,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// The kernel did not answer in time.
    #[error("no answer from nf_tables within {0:?}")]
    Timeout(Duration),
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_GETCHAIN: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

const NFPROTO_IPV4: u8 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;

/// Netfilter hooks of the ip family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Before routing.
    Prerouting = 0,
    /// Locally generated.
    Output = 3,
    /// After routing.
    Postrouting = 4,
}

/// Where a payload expression reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The IP header.
    Network = 1,
    /// The TCP/UDP header.
    Transport = 2,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// Equal.
    Eq = 0,
    /// Not equal.
    Neq = 1,
}

/// One nftables expression, as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Loads `len` bytes at `offset` of a header into register 1.
    Payload {
        /// The header.
        base: Base,
        /// Byte offset.
        offset: u32,
        /// Byte count.
        len: u32,
    },
    /// Compares register 1 with `data`.
    Cmp {
        /// The operator.
        op: CmpOp,
        /// The value.
        data: Vec<u8>,
    },
    /// Loads packet metadata into register 1 (`NFT_META_*`).
    Meta {
        /// The key.
        key: u32,
    },
    /// Register 1 = (register 1 & mask) ^ xor.
    Bitwise {
        /// The mask.
        mask: Vec<u8>,
        /// The xor.
        xor: Vec<u8>,
    },
    /// Loads conntrack data into register 1 (`NFT_CT_*`).
    Ct {
        /// The key.
        key: u32,
    },
    /// Looks the packet up in the FIB into register 1.
    Fib {
        /// `NFTA_FIB_F_*`.
        flags: u32,
        /// `NFT_FIB_RESULT_*`.
        result: u32,
    },
    /// Loads a constant into a data register.
    Immediate {
        /// The register.
        reg: u32,
        /// The value.
        data: Vec<u8>,
    },
    /// Jumps to a regular chain.
    Jump {
        /// The chain.
        chain: String,
    },
    /// Destination NAT to the address in register 1 and the port in
    /// register 2.
    Dnat,
    /// Source NAT to the outgoing interface's address.
    Masq,
}

const NFT_META_L4PROTO: u32 = 16;
const NFT_META_OIFNAME: u32 = 7;
const NFT_CT_STATUS: u32 = 2;
const IPS_DST_NAT: u32 = 0x20;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;
const NFT_JUMP: i32 = -3;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const IFNAMSIZ: usize = 16;

/// Netlink attributes being written.
#[derive(Debug, Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.put(ty, &data);
    }

    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// `NFTA_DATA_VALUE` inside a nested data attribute.
    fn value(&mut self, ty: u16, data: &[u8]) {
        self.nest(ty, |a| a.put(1, data));
    }
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Meta { .. } => "meta",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Ct { .. } => "ct",
            Expr::Fib { .. } => "fib",
            Expr::Immediate { .. } | Expr::Jump { .. } => "immediate",
            Expr::Dnat => "nat",
            Expr::Masq => "masq",
        }
    }

    /// The expression's `NFTA_EXPR_DATA`, in libnftnl's attribute order.
    fn encode_data(&self, a: &mut Attrs) {
        match self {
            Expr::Payload { base, offset, len } => {
                a.u32(1, NFT_REG_1);
                a.u32(2, *base as u32);
                a.u32(3, *offset);
                a.u32(4, *len);
            }
            Expr::Cmp { op, data } => {
                a.u32(1, NFT_REG_1);
                a.u32(2, *op as u32);
                a.value(3, data);
            }
            Expr::Meta { key } | Expr::Ct { key } => {
                a.u32(2, *key);
                a.u32(1, NFT_REG_1);
            }
            Expr::Bitwise { mask, xor } => {
                a.u32(1, NFT_REG_1);
                a.u32(2, NFT_REG_1);
                a.u32(3, mask.len() as u32);
                a.value(4, mask);
                a.value(5, xor);
            }
            Expr::Fib { flags, result } => {
                a.u32(3, *flags);
                a.u32(2, *result);
                a.u32(1, NFT_REG_1);
            }
            Expr::Immediate { reg, data } => {
                a.u32(1, *reg);
                a.value(2, data);
            }
            Expr::Jump { chain } => {
                a.u32(1, NFT_REG_VERDICT);
                a.nest(2, |d| {
                    d.nest(2, |v| {
                        v.put(1, &NFT_JUMP.to_be_bytes());
                        v.str(2, chain);
                    })
                });
            }
            Expr::Dnat => {
                a.u32(1, NFT_NAT_DNAT);
                a.u32(2, u32::from(NFPROTO_IPV4));
                a.u32(3, NFT_REG_1);
                a.u32(5, NFT_REG_2);
                a.u32(7, NF_NAT_RANGE_PROTO_SPECIFIED);
            }
            Expr::Masq => {}
        }
    }

    fn encode(&self, a: &mut Attrs) {
        a.nest(1, |e| {
            e.str(1, self.name());
            e.nest(2, |d| self.encode_data(d));
        });
    }
}

/// A rule: expressions, their nft spelling (for errors and logs), and an
/// optional comment (the owning container).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// The expressions.
    pub exprs: Vec<Expr>,
    /// The rule in nft syntax.
    pub text: String,
    /// The comment, stored as rule user data.
    pub comment: Option<String>,
}

impl Rule {
    fn word(mut self, text: &str, exprs: impl IntoIterator<Item = Expr>) -> Self {
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        self.text += text;
        self.exprs.extend(exprs);
        self
    }

    /// Matches an IPv4 source (`ip saddr NET`) or destination (offset 16)
    /// network, the way nft encodes it: a shorter load for byte-aligned
    /// prefixes, a masked full load otherwise.
    fn ip_net(self, dir: &str, offset: u32, net: Ipv4Net) -> Self {
        let text = if net.prefix() == 32 {
            format!("ip {dir} {}", net.addr())
        } else {
            format!("ip {dir} {net}")
        };
        let octets = net.addr().octets();
        let exprs = if net.prefix().is_multiple_of(8) {
            let len = usize::from(net.prefix() / 8);
            vec![
                Expr::Payload {
                    base: Base::Network,
                    offset,
                    len: len as u32,
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    data: octets[..len].to_vec(),
                },
            ]
        } else {
            let mask = (u32::MAX << (32 - u32::from(net.prefix()))).to_be_bytes();
            vec![
                Expr::Payload {
                    base: Base::Network,
                    offset,
                    len: 4,
                },
                Expr::Bitwise {
                    mask: mask.to_vec(),
                    xor: vec![0; 4],
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    data: octets.to_vec(),
                },
            ]
        };
        self.word(&text, exprs)
    }

    /// `ip saddr NET`.
    pub fn saddr(self, net: Ipv4Net) -> Self {
        self.ip_net("saddr", 12, net)
    }

    /// `ip daddr ADDR`.
    pub fn daddr(self, addr: Ipv4Addr) -> Self {
        let net = Ipv4Net::new(addr, 32).unwrap_or_else(|| unreachable!());
        self.ip_net("daddr", 16, net)
    }

    /// `oifname [!=] NAME`.
    pub fn oifname(self, op: CmpOp, name: &str) -> Self {
        let mut data = name.as_bytes().to_vec();
        data.resize(IFNAMSIZ, 0);
        let neg = if op == CmpOp::Neq { "!= " } else { "" };
        self.word(
            &format!("oifname {neg}\"{name}\""),
            [
                Expr::Meta {
                    key: NFT_META_OIFNAME,
                },
                Expr::Cmp { op, data },
            ],
        )
    }

    /// `ct status dnat`: the connection's destination was translated.
    pub fn ct_dnat(self) -> Self {
        self.word(
            "ct status dnat",
            [
                Expr::Ct { key: NFT_CT_STATUS },
                Expr::Bitwise {
                    mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                },
                Expr::Cmp {
                    op: CmpOp::Neq,
                    data: vec![0; 4],
                },
            ],
        )
    }

    /// `fib daddr type local`: addressed to this host.
    pub fn to_local(self) -> Self {
        self.word(
            "fib daddr type local",
            [
                Expr::Fib {
                    flags: NFTA_FIB_F_DADDR,
                    result: NFT_FIB_RESULT_ADDRTYPE,
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    data: RTN_LOCAL.to_ne_bytes().to_vec(),
                },
            ],
        )
    }

    /// `tcp dport PORT` or `udp dport PORT`.
    pub fn dport(self, proto: Proto, port: u16) -> Self {
        let p: u8 = match proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        };
        self.word(
            &format!("{proto} dport {port}"),
            [
                Expr::Meta {
                    key: NFT_META_L4PROTO,
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    data: vec![p],
                },
                Expr::Payload {
                    base: Base::Transport,
                    offset: 2,
                    len: 2,
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    data: port.to_be_bytes().to_vec(),
                },
            ],
        )
    }

    /// `jump CHAIN`.
    pub fn jump(self, chain: &str) -> Self {
        self.word(
            &format!("jump {chain}"),
            [Expr::Jump {
                chain: chain.to_string(),
            }],
        )
    }

    /// `dnat to ADDR:PORT`.
    pub fn dnat(self, addr: Ipv4Addr, port: u16) -> Self {
        self.word(
            &format!("dnat to {addr}:{port}"),
            [
                Expr::Immediate {
                    reg: NFT_REG_1,
                    data: addr.octets().to_vec(),
                },
                Expr::Immediate {
                    reg: NFT_REG_2,
                    data: port.to_be_bytes().to_vec(),
                },
                Expr::Dnat,
            ],
        )
    }

    /// `masquerade`.
    pub fn masquerade(self) -> Self {
        self.word("masquerade", [Expr::Masq])
    }

    /// `comment "TEXT"` (nft keeps at most 128 bytes).
    pub fn comment(mut self, text: &str) -> Self {
        let mut c = text.to_string();
        while c.len() > 127 {
            c.pop();
        }
        let _ = write!(self.text, " comment \"{c}\"");
        self.comment = Some(c);
        self
    }
}

/// A chain: a base chain when it has a hook (always a `nat` chain with
/// policy accept here), a regular one otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// Its hook and priority.
    pub hook: Option<(Hook, i32)>,
}

/// One message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// `add table ip NAME` (no error when it exists).
    NewTable(String),
    /// `delete table ip NAME`.
    DelTable(String),
    /// `add chain ip TABLE ...`.
    NewChain(String, Chain),
    /// `add rule ip TABLE CHAIN ...`.
    NewRule(String, String, Rule),
    /// `flush chain ip TABLE CHAIN`: deletes its rules.
    FlushChain(String, String),
}

impl Msg {
    fn kind(&self) -> (u16, u16) {
        match self {
            Msg::NewTable(_) => (NFT_MSG_NEWTABLE, NLM_F_CREATE),
            Msg::DelTable(_) => (NFT_MSG_DELTABLE, 0),
            Msg::NewChain(..) => (NFT_MSG_NEWCHAIN, NLM_F_CREATE),
            Msg::NewRule(..) => (NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND),
            Msg::FlushChain(..) => (NFT_MSG_DELRULE, 0),
        }
    }

    /// The message body: the nfgenmsg header and the attributes.
    pub fn body(&self) -> Vec<u8> {
        let mut a = Attrs(vec![NFPROTO_IPV4, 0, 0, 0]);
        match self {
            Msg::NewTable(name) => {
                a.str(1, name);
                a.u32(2, 0);
            }
            Msg::DelTable(name) => a.str(1, name),
            Msg::NewChain(table, chain) => {
                a.str(1, table);
                a.str(3, &chain.name);
                if let Some((hook, prio)) = chain.hook {
                    a.str(7, "nat");
                    a.u32(5, 1); // NF_ACCEPT
                    a.nest(4, |h| {
                        h.u32(1, hook as u32);
                        h.put(2, &prio.to_be_bytes());
                    });
                }
            }
            Msg::FlushChain(table, chain) => {
                a.str(1, table);
                a.str(2, chain);
            }
            Msg::NewRule(table, chain, rule) => {
                a.str(1, table);
                a.str(2, chain);
                a.nest(4, |list| {
                    for e in &rule.exprs {
                        e.encode(list);
                    }
                });
                if let Some(c) = &rule.comment {
                    // NFTNL_UDATA_RULE_COMMENT, as a type-length-value.
                    let mut udata = vec![0, (c.len() + 1) as u8];
                    udata.extend_from_slice(c.as_bytes());
                    udata.push(0);
                    a.put(7, &udata);
                }
            }
        }
        a.0
    }

    /// The message in nft syntax.
    pub fn describe(&self) -> String {
        match self {
            Msg::NewTable(t) => format!("add table ip {t}"),
            Msg::DelTable(t) => format!("delete table ip {t}"),
            Msg::NewChain(t, c) => match c.hook {
                Some((hook, prio)) => format!(
                    "add chain ip {t} {} {{ type nat hook {} priority {prio}; policy accept; }}",
                    c.name,
                    match hook {
                        Hook::Prerouting => "prerouting",
                        Hook::Output => "output",
                        Hook::Postrouting => "postrouting",
                    }
                ),
                None => format!("add chain ip {t} {}", c.name),
            },
            Msg::NewRule(t, c, r) => format!("add rule ip {t} {c} {}", r.text),
            Msg::FlushChain(t, c) => format!("flush chain ip {t} {c}"),
        }
    }
}

fn header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, body: &[u8]) {
    let len = (16 + body.len()) as u32;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(body);
}

/// The batch as sent: BEGIN, each message with sequence `seq + 1 + i` and
/// an ACK requested, END.
pub fn encode_batch(msgs: &[Msg], seq: u32) -> Vec<u8> {
    let batch_body = [
        0u8,
        0,
        (NFNL_SUBSYS_NFTABLES >> 8) as u8,
        NFNL_SUBSYS_NFTABLES as u8,
    ];
    let mut buf = Vec::new();
    header(
        &mut buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        &batch_body,
    );
    for (i, m) in msgs.iter().enumerate() {
        let (ty, flags) = m.kind();
        header(
            &mut buf,
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq + 1 + i as u32,
            &m.body(),
        );
    }
    header(
        &mut buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq + 1 + msgs.len() as u32,
        &batch_body,
    );
    buf
}

/// Netlink messages in a receive buffer: `(type, seq, payload)`.
fn messages(buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let word = |at: usize| [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        let len = u32::from_ne_bytes(word(off)) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let seq = u32::from_ne_bytes(word(off + 8));
        out.push((ty, seq, &buf[off + 16..off + len]));
        off += (len + 3) & !3;
    }
    out
}

/// Top-level attributes of a message body after its 4-byte nfgenmsg:
/// `(type without flags, payload)`.
fn attributes(body: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 4;
    while off + 4 <= body.len() {
        let len = usize::from(u16::from_ne_bytes([body[off], body[off + 1]]));
        let ty = u16::from_ne_bytes([body[off + 2], body[off + 3]]) & 0x3fff;
        if len < 4 || off + len > body.len() {
            break;
        }
        out.push((ty, &body[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    out
}

fn be_u32(data: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(..4)?.try_into().ok()?))
}

fn c_str(data: &[u8]) -> String {
    String::from_utf8_lossy(data.split(|b| *b == 0).next().unwrap_or(&[])).into_owned()
}

/// A base chain on the forward hook whose policy is drop, from a
/// `NEWCHAIN` message of a dump: `"ip filter FORWARD"`.
fn forward_drop(body: &[u8]) -> Option<String> {
    let family = match body.first()? {
        1 => "inet",
        2 => "ip",
        10 => "ip6",
        _ => return None,
    };
    let (mut table, mut name, mut hook, mut policy) = (String::new(), String::new(), None, None);
    for (ty, data) in attributes(body) {
        match ty {
            1 => table = c_str(data),
            3 => name = c_str(data),
            5 => policy = be_u32(data),
            4 => {
                let mut nested = vec![0u8; 4];
                nested.extend_from_slice(data);
                hook = attributes(&nested)
                    .into_iter()
                    .find(|(t, _)| *t == 1)
                    .and_then(|(_, d)| be_u32(d));
            }
            _ => {}
        }
    }
    (hook == Some(NF_INET_FORWARD) && policy == Some(NF_DROP))
        .then(|| format!("{family} {table} {name}"))
}

const NF_INET_FORWARD: u32 = 2;
const NF_DROP: u32 = 0;

/// Base chains of other firewalls that drop forwarded packets by default
/// (Docker's `ip filter FORWARD`, say): an accept in berth's table cannot
/// override them, so containers' traffic dies there unless they accept it.
pub fn forward_drop_chains() -> Result<Vec<String>, NftError> {
    let fd = open()?;
    let mut req = Vec::new();
    header(
        &mut req,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        &[0, 0, 0, 0],
    );
    send(fd.as_raw_fd(), &req, MsgFlags::empty()).map_err(sock_err("send the request"))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Err(NftError::Timeout(TIMEOUT)),
            Err(e) => return Err(sock_err("receive the answer")(e)),
        };
        for (ty, _, payload) in messages(&buf[..n]) {
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = -i32::from_ne_bytes(
                        payload
                            .get(..4)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or([0; 4]),
                    );
                    if errno == 0 {
                        return Ok(out);
                    }
                    return Err(NftError::Refused {
                        what: "list chains".into(),
                        hint: hint(errno),
                        source: io::Error::from_raw_os_error(errno),
                    });
                }
                _ => out.extend(forward_drop(payload)),
            }
        }
    }
}

/// Answers parsed from a receive buffer: `(seq, errno)`, 0 for an ACK.
fn parse_acks(buf: &[u8]) -> Vec<(u32, i32)> {
    messages(buf)
        .into_iter()
        .filter(|(ty, _, p)| *ty == NLMSG_ERROR && p.len() >= 4)
        .map(|(_, seq, p)| (seq, -i32::from_ne_bytes([p[0], p[1], p[2], p[3]])))
        .collect()
}

const TIMEOUT: Duration = Duration::from_secs(5);

fn sock_err(what: &'static str) -> impl FnOnce(Errno) -> NftError {
    move |e| NftError::Socket {
        what,
        source: io::Error::from(e),
    }
}

fn hint(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => " (netd needs CAP_NET_ADMIN)",
        libc::ENOENT | libc::EOPNOTSUPP => {
            " (are the nf_tables, nft_chain_nat, nft_nat, nft_masq, nft_ct and nft_fib_ipv4 modules loaded?)"
        }
        _ => "",
    }
}

/// A netfilter netlink socket in the calling thread's namespace, with a
/// receive timeout.
fn open() -> Result<OwnedFd, NftError> {
    let fd: OwnedFd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(sock_err("open"))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(sock_err("bind"))?;
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::seconds(TIMEOUT.as_secs() as i64),
    )
    .map_err(sock_err("set a timeout"))?;
    Ok(fd)
}

/// Sends `msgs` as one transaction in the calling thread's network
/// namespace: either all of it applies or none does.
pub fn apply(msgs: &[Msg]) -> Result<(), NftError> {
    let fd = open()?;
    let seq = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    let batch = encode_batch(msgs, seq);
    let sent =
        send(fd.as_raw_fd(), &batch, MsgFlags::empty()).map_err(sock_err("send the batch"))?;
    if sent != batch.len() {
        return Err(NftError::Socket {
            what: "send the batch",
            source: io::Error::other(format!("short write: {sent} of {} bytes", batch.len())),
        });
    }
    let last = seq + msgs.len() as u32;
    let mut first_error: Option<(u32, i32)> = None;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Err(NftError::Timeout(TIMEOUT)),
            Err(e) => return Err(sock_err("receive the answer")(e)),
        };
        let mut done = false;
        for (s, errno) in parse_acks(&buf[..n]) {
            if errno != 0 && first_error.is_none() {
                first_error = Some((s, errno));
            }
            // The kernel answers in order; an error on BEGIN ends the batch.
            if s == last || (s == seq && errno != 0) {
                done = true;
            }
        }
        if done {
            break;
        }
    }
    match first_error {
        None => Ok(()),
        Some((s, errno)) => {
            let what = match s.checked_sub(seq + 1).and_then(|i| msgs.get(i as usize)) {
                Some(m) => m.describe(),
                None => "start an nftables transaction".to_string(),
            };
            Err(NftError::Refused {
                what,
                hint: hint(errno),
                source: io::Error::from_raw_os_error(errno),
            })
        }
    }
}

/// The chain holding the published ports, jumped to from prerouting and
/// output for packets addressed to this host.
pub const PORTS_CHAIN: &str = "ports";

/// The whole table of a bridge, replacing whatever the table held (create,
/// delete, create: the idiom that never fails on a missing table):
///
/// ```text
/// table ip BRIDGE {
///   chain prerouting  { type nat hook prerouting priority -100; fib daddr type local jump ports }
///   chain output      { type nat hook output priority -100; fib daddr type local jump ports }
///   chain postrouting { type nat hook postrouting priority 100;
///     ip saddr SUBNET oifname != "BRIDGE" masquerade             # outbound NAT
///     ip saddr SUBNET oifname "BRIDGE" ct status dnat masquerade # container -> published port
///     ip saddr 127.0.0.0/8 oifname "BRIDGE" masquerade           # host's 127.0.0.1 -> published port
///   }
///   chain ports { [ip daddr HOST_IP] tcp dport P dnat to IP:PORT comment "ID" ... }
/// }
/// ```
pub fn ruleset<'a>(
    table: &str,
    bridge: &str,
    subnet: Ipv4Net,
    leases: impl IntoIterator<Item = (&'a String, &'a Lease)>,
) -> Vec<Msg> {
    let t = || table.to_string();
    let chain = |name: &str, hook| {
        Msg::NewChain(
            t(),
            Chain {
                name: name.into(),
                hook,
            },
        )
    };
    let rule = |c: &str, r: Rule| Msg::NewRule(t(), c.to_string(), r);
    let loopback = Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).unwrap_or_else(|| unreachable!());
    let mut msgs = vec![
        Msg::NewTable(t()),
        Msg::DelTable(t()),
        Msg::NewTable(t()),
        chain("prerouting", Some((Hook::Prerouting, -100))),
        chain("output", Some((Hook::Output, -100))),
        chain("postrouting", Some((Hook::Postrouting, 100))),
        chain(PORTS_CHAIN, None),
        rule("prerouting", Rule::default().to_local().jump(PORTS_CHAIN)),
        rule("output", Rule::default().to_local().jump(PORTS_CHAIN)),
        rule(
            "postrouting",
            Rule::default()
                .saddr(subnet)
                .oifname(CmpOp::Neq, bridge)
                .masquerade(),
        ),
        rule(
            "postrouting",
            Rule::default()
                .saddr(subnet)
                .oifname(CmpOp::Eq, bridge)
                .ct_dnat()
                .masquerade(),
        ),
        rule(
            "postrouting",
            Rule::default()
                .saddr(loopback)
                .oifname(CmpOp::Eq, bridge)
                .masquerade(),
        ),
    ];
    msgs.extend(port_rules(table, leases));
    msgs
}

/// Replaces only the published ports (the rest of the table depends on
/// the bridge and subnet alone): flushing a regular chain is much cheaper
/// than re-creating the table (or even re-adding an existing chain, which
/// waits for an RCU grace period). Fails when the chain is missing.
pub fn ports<'a>(
    table: &str,
    leases: impl IntoIterator<Item = (&'a String, &'a Lease)>,
) -> Vec<Msg> {
    let mut msgs = vec![Msg::FlushChain(table.into(), PORTS_CHAIN.into())];
    msgs.extend(port_rules(table, leases));
    msgs
}

fn port_rules<'a>(
    table: &str,
    leases: impl IntoIterator<Item = (&'a String, &'a Lease)>,
) -> Vec<Msg> {
    let mut msgs = Vec::new();
    for (id, lease) in leases {
        for p in &lease.ports {
            let mut r = Rule::default();
            if let Some(std::net::IpAddr::V4(ip)) = p.host_ip {
                r = r.daddr(ip);
            }
            let r = r
                .dport(p.proto, p.host_port)
                .dnat(lease.ip, p.container_port)
                .comment(id);
            msgs.push(Msg::NewRule(table.into(), PORTS_CHAIN.into(), r));
        }
    }
    msgs
}

/// Deletes the table (and so everything in it); a missing table is fine.
pub fn delete_table(table: &str) -> Vec<Msg> {
    vec![Msg::NewTable(table.into()), Msg::DelTable(table.into())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::ipam::Port;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    // Each expected body below is what `nft --debug=mnl -f FILE` (nftables
    // 1.0.6) sent for the rule in the comment, inside
    // `table ip berth0 { ... }`.

    /// `add table ip berth0`
    #[test]
    fn table() {
        assert_eq!(
            Msg::NewTable("berth0".into()).body(),
            hex("02000000 0b000100 62657274 68300000 08000200 00000000")
        );
        assert_eq!(
            Msg::DelTable("berth0".into()).body(),
            hex("02000000 0b000100 62657274 68300000")
        );
        // `flush chain ip berth0 ports`
        assert_eq!(
            Msg::FlushChain("berth0".into(), "ports".into()).body(),
            hex("02000000 0b000100 62657274 68300000 0a000200 706f7274 73000000")
        );
    }

    /// `chain prerouting { type nat hook prerouting priority dstnat; policy accept; }`,
    /// the postrouting one at srcnat, and `chain ports`.
    #[test]
    fn chains() {
        let c = |name: &str, hook| {
            Msg::NewChain(
                "berth0".into(),
                Chain {
                    name: name.into(),
                    hook,
                },
            )
            .body()
        };
        assert_eq!(
            c("prerouting", Some((Hook::Prerouting, -100))),
            hex(
                "02000000 0b000100 62657274 68300000 0f000300 70726572 6f757469 6e670000
                 08000700 6e617400 08000500 00000001 14000480 08000100 00000000 08000200 ffffff9c"
            )
        );
        assert_eq!(
            c("output", Some((Hook::Output, -100))),
            hex(
                "02000000 0b000100 62657274 68300000 0b000300 6f757470 75740000
                 08000700 6e617400 08000500 00000001 14000480 08000100 00000003 08000200 ffffff9c"
            )
        );
        assert_eq!(
            c("postrouting", Some((Hook::Postrouting, 100))),
            hex(
                "02000000 0b000100 62657274 68300000 10000300 706f7374 726f7574 696e6700
                 08000700 6e617400 08000500 00000001 14000480 08000100 00000004 08000200 00000064"
            )
        );
        assert_eq!(
            c("ports", None),
            hex("02000000 0b000100 62657274 68300000 0a000300 706f7274 73000000")
        );
    }

    fn rule(chain: &str, r: Rule) -> Vec<u8> {
        Msg::NewRule("berth0".into(), chain.into(), r).body()
    }

    /// `fib daddr type local jump ports` in prerouting.
    #[test]
    fn fib_jump() {
        let r = Rule::default().to_local().jump("ports");
        assert_eq!(r.text, "fib daddr type local jump ports");
        assert_eq!(
            rule("prerouting", r),
            hex("02000000 0b000100 62657274 68300000 0f000200 70726572 6f757469 6e670000
                 94000480
                   28000180 08000100 66696200 1c000280 08000300 00000002 08000200 00000003 08000100 00000001
                   2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000 0c000380 08000100 02000000
                   3c000180 0e000100 696d6d65 64696174 65000000 28000280 08000100 00000000
                     1c000280 18000280 08000100 fffffffd 0a000200 706f7274 73000000")
        );
    }

    /// `ip saddr 10.213.0.0/16 oifname != "berth0" masquerade`
    #[test]
    fn outbound_masquerade() {
        let r = Rule::default()
            .saddr(net("10.213.0.0/16"))
            .oifname(CmpOp::Neq, "berth0")
            .masquerade();
        assert_eq!(
            r.text,
            "ip saddr 10.213.0.0/16 oifname != \"berth0\" masquerade"
        );
        assert_eq!(
            rule("postrouting", r),
            hex("02000000 0b000100 62657274 68300000 10000200 706f7374 726f7574 696e6700
                 d4000480
                   34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200 00000001 08000300 0000000c 08000400 00000002
                   2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000 0c000380 06000100 0ad50000
                   24000180 09000100 6d657461 00000000 14000280 08000200 00000007 08000100 00000001
                   38000180 08000100 636d7000 2c000280 08000100 00000001 08000200 00000001
                     18000380 14000100 62657274 68300000 00000000 00000000
                   14000180 09000100 6d617371 00000000 04000280")
        );
    }

    /// `ip saddr 10.213.0.0/16 oifname "berth0" ct status dnat masquerade`
    #[test]
    fn hairpin_masquerade() {
        let r = Rule::default()
            .saddr(net("10.213.0.0/16"))
            .oifname(CmpOp::Eq, "berth0")
            .ct_dnat()
            .masquerade();
        assert_eq!(
            rule("postrouting", r),
            hex("02000000 0b000100 62657274 68300000 10000200 706f7374 726f7574 696e6700
                 64010480
                   34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200 00000001 08000300 0000000c 08000400 00000002
                   2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000 0c000380 06000100 0ad50000
                   24000180 09000100 6d657461 00000000 14000280 08000200 00000007 08000100 00000001
                   38000180 08000100 636d7000 2c000280 08000100 00000001 08000200 00000000
                     18000380 14000100 62657274 68300000 00000000 00000000
                   20000180 07000100 63740000 14000280 08000200 00000002 08000100 00000001
                   44000180 0c000100 62697477 69736500 34000280 08000100 00000001 08000200 00000001 08000300 00000004
                     0c000480 08000100 20000000 0c000580 08000100 00000000
                   2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000001 0c000380 08000100 00000000
                   14000180 09000100 6d617371 00000000 04000280")
        );
    }

    /// `ip saddr 127.0.0.0/8 oifname "berth0" masquerade`
    #[test]
    fn loopback_masquerade() {
        let r = Rule::default()
            .saddr(net("127.0.0.0/8"))
            .oifname(CmpOp::Eq, "berth0")
            .masquerade();
        assert_eq!(
            rule("postrouting", r),
            hex("02000000 0b000100 62657274 68300000 10000200 706f7374 726f7574 696e6700
                 d4000480
                   34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200 00000001 08000300 0000000c 08000400 00000001
                   2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000 0c000380 05000100 7f000000
                   24000180 09000100 6d657461 00000000 14000280 08000200 00000007 08000100 00000001
                   38000180 08000100 636d7000 2c000280 08000100 00000001 08000200 00000000
                     18000380 14000100 62657274 68300000 00000000 00000000
                   14000180 09000100 6d617371 00000000 04000280")
        );
    }

    /// `ip saddr 172.30.16.0/20 oifname "x" masquerade`: a prefix that is
    /// not byte-aligned is a masked load.
    #[test]
    fn unaligned_prefix() {
        let r = Rule::default()
            .saddr(net("172.30.16.0/20"))
            .oifname(CmpOp::Eq, "x")
            .masquerade();
        assert_eq!(
            rule("postrouting", r),
            hex("02000000 0b000100 62657274 68300000 10000200 706f7374 726f7574 696e6700
                 18010480
                   34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200 00000001 08000300 0000000c 08000400 00000004
                   44000180 0c000100 62697477 69736500 34000280 08000100 00000001 08000200 00000001 08000300 00000004
                     0c000480 08000100 fffff000 0c000580 08000100 00000000
                   2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000 0c000380 08000100 ac1e1000
                   24000180 09000100 6d657461 00000000 14000280 08000200 00000007 08000100 00000001
                   38000180 08000100 636d7000 2c000280 08000100 00000001 08000200 00000000
                     18000380 14000100 78000000 00000000 00000000 00000000
                   14000180 09000100 6d617371 00000000 04000280")
        );
    }

    /// `tcp dport 8080 dnat to 10.213.0.2:80 comment "c1"`
    #[test]
    fn tcp_dnat() {
        let r = Rule::default()
            .dport(Proto::Tcp, 8080)
            .dnat(Ipv4Addr::new(10, 213, 0, 2), 80)
            .comment("c1");
        assert_eq!(
            r.text,
            "tcp dport 8080 dnat to 10.213.0.2:80 comment \"c1\""
        );
        assert_eq!(
            rule("ports", r),
            hex("02000000 0b000100 62657274 68300000 0a000200 706f7274 73000000
                 44010480
                   24000180 09000100 6d657461 00000000 14000280 08000200 00000010 08000100 00000001
                   2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000 0c000380 05000100 06000000
                   34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200 00000002 08000300 00000002 08000400 00000002
                   2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000 0c000380 06000100 1f900000
                   2c000180 0e000100 696d6d65 64696174 65000000 18000280 08000100 00000001 0c000280 08000100 0ad50002
                   2c000180 0e000100 696d6d65 64696174 65000000 18000280 08000100 00000002 0c000280 06000100 00500000
                   38000180 08000100 6e617400 2c000280 08000100 00000001 08000200 00000002 08000300 00000001
                     08000500 00000002 08000700 00000002
                 09000700 00036331 00000000")
        );
    }

    /// `ip daddr 10.240.0.1 udp dport 5353 dnat to 10.213.0.2:53 comment "c1"`
    #[test]
    fn udp_dnat_on_one_address() {
        let r = Rule::default()
            .daddr(Ipv4Addr::new(10, 240, 0, 1))
            .dport(Proto::Udp, 5353)
            .dnat(Ipv4Addr::new(10, 213, 0, 2), 53)
            .comment("c1");
        assert_eq!(
            r.text,
            "ip daddr 10.240.0.1 udp dport 5353 dnat to 10.213.0.2:53 comment \"c1\""
        );
        assert_eq!(
            rule("ports", r),
            hex("02000000 0b000100 62657274 68300000 0a000200 706f7274 73000000
                 a4010480
                   34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200 00000001 08000300 00000010 08000400 00000004
                   2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000 0c000380 08000100 0af00001
                   24000180 09000100 6d657461 00000000 14000280 08000200 00000010 08000100 00000001
                   2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000 0c000380 05000100 11000000
                   34000180 0c000100 7061796c 6f616400 24000280 08000100 00000001 08000200 00000002 08000300 00000002 08000400 00000002
                   2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 00000000 0c000380 06000100 14e90000
                   2c000180 0e000100 696d6d65 64696174 65000000 18000280 08000100 00000001 0c000280 08000100 0ad50002
                   2c000180 0e000100 696d6d65 64696174 65000000 18000280 08000100 00000002 0c000280 06000100 00350000
                   38000180 08000100 6e617400 2c000280 08000100 00000001 08000200 00000002 08000300 00000001
                     08000500 00000002 08000700 00000002
                 09000700 00036331 00000000")
        );
    }

    #[test]
    fn batch_framing_and_acks() {
        let msgs = delete_table("t");
        let b = encode_batch(&msgs, 100);
        // BEGIN: len 20, type 16, flags REQUEST, seq 100, res_id NFTABLES.
        assert_eq!(
            &b[..20],
            &hex("14000000 1000 0100 64000000 00000000 0000000a")[..]
        );
        // NEWTABLE: type 0x0a00, REQUEST|ACK|CREATE, seq 101.
        assert_eq!(&b[20..32], &hex("24000000 000a 0504 65000000")[..]);
        // END: seq 103.
        assert_eq!(
            &b[b.len() - 20..],
            &hex("14000000 1100 0100 67000000 00000000 0000000a")[..]
        );

        let mut answer = Vec::new();
        for (seq, err) in [(101u32, 0i32), (102, -libc::ENOENT)] {
            header(&mut answer, NLMSG_ERROR, 0, seq, &{
                let mut p = err.to_ne_bytes().to_vec();
                p.extend_from_slice(&[0; 16]);
                p
            });
        }
        assert_eq!(parse_acks(&answer), vec![(101, 0), (102, libc::ENOENT)]);
        assert_eq!(parse_acks(&answer[..10]), vec![]);
    }

    #[test]
    fn finds_forward_chains_that_drop() {
        let chain = |family: u8, hook: u32, policy: u32| {
            let mut a = Attrs(vec![family, 0, 0, 0]);
            a.str(1, "filter");
            a.put(2, &7u64.to_be_bytes()); // handle
            a.str(3, "FORWARD");
            a.nest(4, |h| {
                h.u32(1, hook);
                h.u32(2, 0);
            });
            a.u32(5, policy);
            a.str(7, "filter");
            a.0
        };
        assert_eq!(
            forward_drop(&chain(2, 2, 0)).as_deref(),
            Some("ip filter FORWARD")
        );
        assert_eq!(
            forward_drop(&chain(1, 2, 0)).as_deref(),
            Some("inet filter FORWARD")
        );
        assert_eq!(forward_drop(&chain(2, 2, 1)), None, "policy accept");
        assert_eq!(forward_drop(&chain(2, 1, 0)), None, "input hook");
        assert_eq!(forward_drop(&chain(7, 2, 0)), None, "bridge family");
        assert_eq!(forward_drop(&[2, 0]), None);
    }

    #[test]
    fn ruleset_lists_every_published_port() {
        let mut leases = std::collections::BTreeMap::new();
        leases.insert(
            "c1".to_string(),
            Lease {
                name: "web".into(),
                aliases: vec![],
                ip: Ipv4Addr::new(10, 213, 0, 2),
                ports: vec![
                    Port {
                        host_ip: None,
                        host_port: 8080,
                        container_port: 80,
                        proto: Proto::Tcp,
                    },
                    Port {
                        host_ip: Some("10.240.0.1".parse().unwrap()),
                        host_port: 5353,
                        container_port: 53,
                        proto: Proto::Udp,
                    },
                ],
                etc_dir: None,
            },
        );
        let msgs = ruleset("berth0", "berth0", net("10.213.0.0/16"), &leases);
        let text: Vec<String> = msgs.iter().map(Msg::describe).collect();
        assert_eq!(
            text,
            [
                "add table ip berth0",
                "delete table ip berth0",
                "add table ip berth0",
                "add chain ip berth0 prerouting { type nat hook prerouting priority -100; policy accept; }",
                "add chain ip berth0 output { type nat hook output priority -100; policy accept; }",
                "add chain ip berth0 postrouting { type nat hook postrouting priority 100; policy accept; }",
                "add chain ip berth0 ports",
                "add rule ip berth0 prerouting fib daddr type local jump ports",
                "add rule ip berth0 output fib daddr type local jump ports",
                "add rule ip berth0 postrouting ip saddr 10.213.0.0/16 oifname != \"berth0\" masquerade",
                "add rule ip berth0 postrouting ip saddr 10.213.0.0/16 oifname \"berth0\" ct status dnat masquerade",
                "add rule ip berth0 postrouting ip saddr 127.0.0.0/8 oifname \"berth0\" masquerade",
                "add rule ip berth0 ports tcp dport 8080 dnat to 10.213.0.2:80 comment \"c1\"",
                "add rule ip berth0 ports ip daddr 10.240.0.1 udp dport 5353 dnat to 10.213.0.2:53 comment \"c1\"",
            ]
        );
        let update: Vec<String> = ports("berth0", &leases).iter().map(Msg::describe).collect();
        assert_eq!(update[0], "flush chain ip berth0 ports");
        assert_eq!(update[1..], text[12..]);
    }
}
