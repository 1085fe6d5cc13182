//! The ACPI power button (QEMU's `system_powerdown`): found among the input
//! devices once coldplug has loaded `button` and `evdev`, read as a stream of
//! `struct input_event` records.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `EV_KEY` from `linux/input-event-codes.h`.
pub const EV_KEY: u16 = 1;

/// `KEY_POWER` from `linux/input-event-codes.h`.
pub const KEY_POWER: u16 = 116;

/// Size of `struct input_event` on 64-bit Linux (timeval + type + code + value).
pub const EVENT_SIZE: usize = 24;

/// One decoded input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    /// Event type (`EV_KEY`...).
    pub kind: u16,
    /// Key or axis code.
    pub code: u16,
    /// 1 press, 0 release, 2 repeat for keys.
    pub value: i32,
}

impl InputEvent {
    /// Whether this is the power key going down.
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }
}

/// Decodes whole `input_event` records from `buf` (a trailing partial record
/// is ignored).
pub fn decode_events(buf: &[u8]) -> Vec<InputEvent> {
    buf.chunks_exact(EVENT_SIZE)
        .map(|rec| InputEvent {
            kind: u16::from_ne_bytes([rec[16], rec[17]]),
            code: u16::from_ne_bytes([rec[18], rec[19]]),
            value: i32::from_ne_bytes([rec[20], rec[21], rec[22], rec[23]]),
        })
        .collect()
}

/// Whether a sysfs key-capability bitmap (`capabilities/key`: hex words, most
/// significant first, 64 bits each) has `code` set.
pub fn caps_have_key(caps: &str, code: u16) -> bool {
    let words: Vec<&str> = caps.split_whitespace().collect();
    let index = usize::from(code / 64);
    let bit = code % 64;
    let Some(word) = words
        .len()
        .checked_sub(index + 1)
        .and_then(|i| words.get(i))
    else {
        return false;
    };
    u64::from_str_radix(word, 16).is_ok_and(|w| w & (1u64 << bit) != 0)
}

/// Whether an input device with this name and key bitmap is a power button.
pub fn is_power_button(name: &str, key_caps: &str) -> bool {
    name.trim() == "Power Button" || caps_have_key(key_caps, KEY_POWER)
}

/// The open power-button devices, rescanned until one appears.
pub struct PowerButtons {
    sys_input: PathBuf,
    dev_input: PathBuf,
    open: Vec<(String, File)>,
}

impl Default for PowerButtons {
    fn default() -> Self {
        Self::new(Path::new("/sys/class/input"), Path::new("/dev/input"))
    }
}

impl PowerButtons {
    /// Power buttons among `sys_input/event*`, opened from `dev_input`.
    pub fn new(sys_input: &Path, dev_input: &Path) -> Self {
        Self {
            sys_input: sys_input.to_path_buf(),
            dev_input: dev_input.to_path_buf(),
            open: Vec::new(),
        }
    }

    /// Event device names (`event0`) that are power buttons.
    pub fn find(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.sys_input) else {
            return Vec::new();
        };
        let mut found: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("event"))
            .filter(|n| {
                let dev = self.sys_input.join(n).join("device");
                let name = std::fs::read_to_string(dev.join("name")).unwrap_or_default();
                let caps =
                    std::fs::read_to_string(dev.join("capabilities/key")).unwrap_or_default();
                is_power_button(&name, &caps)
            })
            .collect();
        found.sort();
        found
    }

    /// Opens power buttons not yet open; returns how many are open now.
    pub fn rescan(&mut self) -> usize {
        for name in self.find() {
            if self.open.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let path = self.dev_input.join(&name);
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(f) => {
                    log::info!("watching power button {}", path.display());
                    self.open.push((name, f));
                }
                Err(e) => log::warn!("cannot open power button {}: {e}", path.display()),
            }
        }
        self.open.len()
    }

    /// Whether any power button is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The devices to poll.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.open.iter().map(|(_, f)| f.as_fd()).collect()
    }

    /// Reads what device `index` has; true if the power key was pressed.
    /// A device that fails (unplugged) is dropped.
    pub fn pressed(&mut self, index: usize) -> bool {
        let Some((_, file)) = self.open.get_mut(index) else {
            return false;
        };
        let mut buf = [0u8; EVENT_SIZE * 16];
        let mut pressed = false;
        loop {
            match file.read(&mut buf) {
                Ok(0) => {
                    self.open.remove(index);
                    return pressed;
                }
                Ok(n) => {
                    pressed |= decode_events(&buf[..n])
                        .iter()
                        .any(InputEvent::is_power_press)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return pressed,
                Err(e) => {
                    log::warn!("power button read failed: {e}");
                    self.open.remove(index);
                    return pressed;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut rec = vec![0u8; 16];
        rec.extend(kind.to_ne_bytes());
        rec.extend(code.to_ne_bytes());
        rec.extend(value.to_ne_bytes());
        rec
    }

    #[test]
    fn decodes_power_press_and_ignores_partial_records() {
        let mut buf = event(EV_KEY, KEY_POWER, 1);
        buf.extend(event(0, 0, 0));
        buf.extend(event(EV_KEY, KEY_POWER, 0));
        buf.extend([1, 2, 3]);
        let events = decode_events(&buf);
        assert_eq!(events.len(), 3);
        assert!(events[0].is_power_press());
        assert!(!events[1].is_power_press());
        assert!(!events[2].is_power_press());
    }

    #[test]
    fn key_bitmaps() {
        // The ACPI power button as the 6.1 kernel prints it.
        assert!(caps_have_key("10000000000000 0", KEY_POWER));
        assert!(!caps_have_key("0", KEY_POWER));
        assert!(caps_have_key("1", 0));
        assert!(!caps_have_key("", KEY_POWER));
        assert!(is_power_button("Power Button\n", ""));
        assert!(!is_power_button("AT Translated Set 2 keyboard", "0 0"));
    }

    #[test]
    fn finds_buttons_in_fake_sysfs() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev)?;
        for (ev, name, caps) in [
            ("event0", "Power Button\n", "10000000000000 0\n"),
            ("event1", "AT keyboard\n", "0\n"),
            ("event2", "Sleep Button\n", "4000 0 0\n"),
        ] {
            std::fs::create_dir_all(sys.join(ev).join("device/capabilities"))?;
            std::fs::write(sys.join(ev).join("device/name"), name)?;
            std::fs::write(sys.join(ev).join("device/capabilities/key"), caps)?;
            std::fs::write(dev.join(ev), event(EV_KEY, KEY_POWER, 1))?;
        }
        let mut buttons = PowerButtons::new(&sys, &dev);
        assert_eq!(buttons.find(), ["event0"]);
        assert_eq!(buttons.rescan(), 1);
        assert_eq!(buttons.rescan(), 1);
        assert!(buttons.pressed(0));
        Ok(())
    }
}
