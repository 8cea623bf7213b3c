//! Request limits and name validation, checked before anything is written.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Time CreateTable is given per partition on top of a request's usual deadline: each
/// partition's replicas are written, synced and elect a leader, so a table of a thousand
/// partitions needs tens of seconds (on a 2-core machine running all three nodes, 40 to 60 s:
/// at 40 ms per partition, about half of such creations ran out of time there).
pub const CREATE_TIME_PER_PARTITION: std::time::Duration = std::time::Duration::from_millis(60);

/// The extra time CreateTable of a table with `partitions` partitions is given.
pub fn create_table_time(partitions: usize) -> std::time::Duration {
    CREATE_TIME_PER_PARTITION.saturating_mul(u32::try_from(partitions).unwrap_or(u32::MAX))
}

/// Most partitions one CreateTable may make (split keys + 1). Each is a Raft group opened
/// on its replicas' nodes before the answer; a table that must grow beyond this is better
/// grown by the controller's splits, which spread the work over time.
pub const MAX_CREATE_PARTITIONS: usize = 4096;

/// Refuses a CreateTable with more split keys than [`MAX_CREATE_PARTITIONS`] allows.
pub fn check_split_count(split_keys: usize) -> Result<()> {
    if split_keys >= MAX_CREATE_PARTITIONS {
        return Err(Error::InvalidArgument(format!(
            "{split_keys} split keys would make {} partitions; one CreateTable makes at most \
             {MAX_CREATE_PARTITIONS}: create the table with fewer split keys and let the \
             controller split it as it grows (or split it with `cairn admin split`)",
            split_keys + 1
        )));
    }
    Ok(())
}

/// The largest `--max-key-bytes` a node takes: the storage engine holds keys of up to
/// 65,535 bytes, and puts up to 18 bytes in front of a user key.
pub const MAX_KEY_BYTES_CEILING: usize = 65_535 - 18;

/// The largest `--max-value-bytes` a node takes: a value travels whole in one message
/// between nodes (at most 512 MiB) and in one Raft entry.
pub const MAX_VALUE_BYTES_CEILING: usize = 256 << 20;

/// Size limits applied to every write and key lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest key in bytes (keys must also be non-empty). Default 4096.
    pub max_key_bytes: usize,
    /// Largest value in bytes. Default 1 MiB.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 4096,
            max_value_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// Refuses limits a node cannot honour: a key limit of 0 or past
    /// [`MAX_KEY_BYTES_CEILING`], a value limit past [`MAX_VALUE_BYTES_CEILING`].
    pub fn validate(&self) -> Result<()> {
        if self.max_value_bytes > MAX_VALUE_BYTES_CEILING {
            return Err(Error::InvalidArgument(format!(
                "--max-value-bytes {} is out of range: use at most {MAX_VALUE_BYTES_CEILING} \
                 (256 MiB; a value travels whole in one message between nodes)",
                self.max_value_bytes
            )));
        }
        if !(1..=MAX_KEY_BYTES_CEILING).contains(&self.max_key_bytes) {
            return Err(Error::InvalidArgument(format!(
                "--max-key-bytes {} is out of range: use 1 to {MAX_KEY_BYTES_CEILING} (the \
                 storage engine's key limit, less Cairn's key prefix)",
                self.max_key_bytes
            )));
        }
        Ok(())
    }

    /// Refuses a List bound (`name`: start, end, prefix or cursor) longer than any key can
    /// be: one byte past the longest key, as a page's cursor may be.
    pub fn check_bound(&self, name: &str, bound: &[u8]) -> Result<()> {
        if bound.len() > self.max_key_bytes.saturating_add(1) {
            return Err(Error::InvalidArgument(format!(
                "{name} is {} bytes; keys are at most {} bytes (the servers' --max-key-bytes)",
                bound.len(),
                self.max_key_bytes
            )));
        }
        Ok(())
    }

    /// Refuses an empty or oversized key.
    pub fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("key must not be empty".into()));
        }
        if key.len() > self.max_key_bytes {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    /// The largest request body a node reads for one write: the largest value twice over
    /// (room for its encoding in JSON or gRPC) and 1 MiB for the rest.
    pub fn request_bytes(&self) -> usize {
        self.max_value_bytes
            .saturating_mul(2)
            .saturating_add(1 << 20)
    }

    /// Refuses an oversized value.
    pub fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.max_value_bytes {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }
}

/// Table names match `[A-Za-z0-9_.-]{1,128}`.
pub fn validate_table_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid table name {name:?}: use 1 to 128 characters from A-Z a-z 0-9 _ . -"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_table_is_refused_more_partitions_than_the_limit() {
        assert!(check_split_count(MAX_CREATE_PARTITIONS - 1).is_ok());
        let err = check_split_count(MAX_CREATE_PARTITIONS).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("at most 4096"), "{err}");
    }

    #[test]
    fn table_names() {
        assert!(validate_table_name("users_v1.2-x").is_ok());
        assert!(validate_table_name("").is_err());
        assert!(validate_table_name("has space").is_err());
        assert!(validate_table_name("slash/").is_err());
        assert!(validate_table_name(&"a".repeat(128)).is_ok());
        assert!(validate_table_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn limits_past_the_engine_are_refused() {
        let l = |max_key_bytes| Limits {
            max_key_bytes,
            ..Limits::default()
        };
        assert!(Limits::default().validate().is_ok());
        assert!(l(MAX_KEY_BYTES_CEILING).validate().is_ok());
        let err = l(MAX_KEY_BYTES_CEILING + 1).validate().unwrap_err();
        assert!(err.to_string().contains("use 1 to 65517"), "{err}");
        assert!(l(0).validate().is_err());
        let v = |max_value_bytes| Limits {
            max_value_bytes,
            ..Limits::default()
        };
        assert!(v(MAX_VALUE_BYTES_CEILING).validate().is_ok());
        let err = v(MAX_VALUE_BYTES_CEILING + 1).validate().unwrap_err();
        assert!(err.to_string().contains("--max-value-bytes"), "{err}");
    }

    #[test]
    fn list_bounds_may_pass_the_longest_key_by_one_byte() {
        let l = Limits::default();
        assert!(l.check_bound("start", &[7u8; 4097]).is_ok());
        let err = l.check_bound("start", &[7u8; 4098]).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("start is 4098 bytes"), "{err}");
    }

    #[test]
    fn key_and_value_limits() {
        let l = Limits::default();
        assert!(matches!(l.check_key(b""), Err(Error::InvalidArgument(_))));
        assert!(l.check_key(&[7u8; 4096]).is_ok());
        assert!(matches!(
            l.check_key(&[7u8; 4097]),
            Err(Error::KeyTooLarge { .. })
        ));
        assert!(l.check_value(&vec![0u8; 1 << 20]).is_ok());
        assert!(matches!(
            l.check_value(&vec![0u8; (1 << 20) + 1]),
            Err(Error::ValueTooLarge { .. })
        ));
    }
}
