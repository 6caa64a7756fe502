//! A hash of an object's JSON serialization, computed as it is written: the caches hash every
//! watch event and the reconcile every desired child, and a buffer of the whole JSON for each
//! (kilobytes, thousands a second in a burst) would be allocated only to be hashed and freed.

use std::{
    hash::{DefaultHasher, Hasher},
    io,
};

use serde::Serialize;

/// The hash of `value` as serde_json writes it. Within one process, equal JSON gives equal hashes.
pub fn json_hash<T: Serialize + ?Sized>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    // Writing to a hasher cannot fail, and a Kubernetes object has no map with non-string keys.
    serde_json::to_writer(HashWriter(&mut hasher), value).expect("a Kubernetes object serializes");
    hasher.finish()
}

/// The hash of a UID, a version or a kind's name, for comparing with another's: a `u64` kept
/// instead of a copy of the string.
pub fn text_hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(text.as_bytes());
    hasher.finish()
}

/// Feeds what is written to a hasher.
struct HashWriter<'a>(&'a mut DefaultHasher);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn equal_json_hashes_alike_and_a_change_does_not() {
        let a = json!({"spec": {"replicas": 2, "template": {"labels": {"v": "1"}}}});
        let b = json!({"spec": {"replicas": 2, "template": {"labels": {"v": "1"}}}});
        let c = json!({"spec": {"replicas": 3, "template": {"labels": {"v": "1"}}}});
        assert_eq!(json_hash(&a), json_hash(&b));
        assert_ne!(json_hash(&a), json_hash(&c));
    }

    #[test]
    fn it_is_the_hash_of_the_written_bytes() {
        let value = json!({"metadata": {"name": "bert"}});
        let mut hasher = DefaultHasher::new();
        hasher.write(&serde_json::to_vec(&value).unwrap());
        assert_eq!(
            json_hash(&value),
            hasher.finish(),
            "however serde_json splits its writes"
        );
    }
}
