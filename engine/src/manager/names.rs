//! Container ids and names: generation, validation, and lookup by id,
//! unique id prefix or name.

use std::collections::BTreeMap;

/// A new container id: 64 hex digits from the kernel's random source.
pub fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut bytes)?;
    Ok(hex::encode(bytes))
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
    "nifty", "proud", "quiet", "sharp", "tender", "vivid", "witty", "zealous", "bold", "clever",
];
const NOUNS: &[&str] = &[
    "albatross",
    "beacon",
    "buoy",
    "capstan",
    "dinghy",
    "ferry",
    "galley",
    "harbor",
    "jetty",
    "keel",
    "lighthouse",
    "mooring",
    "narwhal",
    "oar",
    "pier",
    "quay",
    "rudder",
    "schooner",
    "tugboat",
    "wharf",
];

/// A Docker-style `adjective_noun` name derived from `id`, with a number
/// added when `taken` says it is in use.
pub fn generate_name(id: &str, taken: impl Fn(&str) -> bool) -> String {
    let b = hex::decode(id.get(..8).unwrap_or("00000000")).unwrap_or_else(|_| vec![0; 4]);
    let a = ADJECTIVES[usize::from(b.first().copied().unwrap_or(0)) % ADJECTIVES.len()];
    let n = NOUNS[usize::from(b.get(1).copied().unwrap_or(0)) % NOUNS.len()];
    let base = format!("{a}_{n}");
    if !taken(&base) {
        return base;
    }
    (1..)
        .map(|i| format!("{base}{i}"))
        .find(|c| !taken(c))
        .unwrap_or(base)
}

/// Docker's container name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`; a leading
/// `/` (Docker's API form) is dropped.
pub fn check_name(name: &str) -> Result<String, String> {
    let name = name.strip_prefix('/').unwrap_or(name);
    if crate::workload::valid_name(name) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "invalid container name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        ))
    }
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The one container.
    Found(String),
    /// Nothing matches.
    NotFound,
    /// An id prefix matches several containers.
    Ambiguous(usize),
}

/// Finds a container by full id, exact name (with or without a leading
/// `/`), or unique id prefix, in that order (Docker's).
pub fn lookup(names: &BTreeMap<String, String>, ids: &[&str], key: &str) -> Lookup {
    if key.is_empty() {
        return Lookup::NotFound;
    }
    if ids.contains(&key) {
        return Lookup::Found(key.to_string());
    }
    let name = key.strip_prefix('/').unwrap_or(key);
    if let Some(id) = names.get(name) {
        return Lookup::Found(id.clone());
    }
    let matches: Vec<&&str> = ids.iter().filter(|id| id.starts_with(key)).collect();
    match matches.as_slice() {
        [] => Lookup::NotFound,
        [one] => Lookup::Found(one.to_string()),
        many => Lookup::Ambiguous(many.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, new_id().unwrap());
    }

    #[test]
    fn lookup_prefers_id_then_name_then_prefix() {
        let a = "abc123".to_string() + &"0".repeat(58);
        let b = "abd456".to_string() + &"0".repeat(58);
        let mut names = BTreeMap::new();
        names.insert("web".to_string(), a.clone());
        names.insert("abd".to_string(), a.clone());
        let ids = [a.as_str(), b.as_str()];
        assert_eq!(lookup(&names, &ids, &a), Lookup::Found(a.clone()));
        assert_eq!(lookup(&names, &ids, "/web"), Lookup::Found(a.clone()));
        // A name wins over an id prefix, as in Docker.
        assert_eq!(lookup(&names, &ids, "abd"), Lookup::Found(a.clone()));
        assert_eq!(lookup(&names, &ids, "abd4"), Lookup::Found(b.clone()));
        assert_eq!(lookup(&names, &ids, "ab"), Lookup::Ambiguous(2));
        assert_eq!(lookup(&names, &ids, "zz"), Lookup::NotFound);
        assert_eq!(lookup(&names, &ids, ""), Lookup::NotFound);
    }

    #[test]
    fn names_are_checked_and_generated_unique() {
        assert_eq!(check_name("/web-1").unwrap(), "web-1");
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
        let id = "0102".to_string() + &"0".repeat(60);
        let first = generate_name(&id, |_| false);
        let second = generate_name(&id, |n| n == first);
        assert_ne!(first, second);
        assert!(second.starts_with(&first));
    }
}
