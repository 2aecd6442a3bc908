//! Deterministic partitioning of a definition's images across runs
//! (`--shard INDEX/COUNT`), so that several machines can share one definition:
//! an image belongs to the shard its **target** hashes to, so two shards never
//! write the same target, and together the shards cover every image.

use std::fmt;
use std::str::FromStr;

use crate::reference::ImageRef;

/// One shard of `count`, numbered from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a shard: expected INDEX/COUNT with 0 <= INDEX < COUNT, for example 0/4")]
pub struct ShardParseError(pub String);

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Shard, ShardParseError> {
        if count == 0 || index >= count {
            return Err(ShardParseError(format!("{index}/{count}")));
        }
        Ok(Shard { index, count })
    }

    /// Whether the image with this target belongs to this shard. The hash is
    /// FNV-1a over the target as written: stable across versions, platforms
    /// and runs.
    pub fn owns(&self, target: &ImageRef) -> bool {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in target.to_string().bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (h % self.count as u64) as u32 == self.index
    }
}

impl FromStr for Shard {
    type Err = ShardParseError;

    fn from_str(s: &str) -> Result<Shard, ShardParseError> {
        let err = || ShardParseError(s.to_string());
        let (i, c) = s.split_once('/').ok_or_else(err)?;
        let index = i.trim().parse().map_err(|_| err())?;
        let count = c.trim().parse().map_err(|_| err())?;
        Shard::new(index, count).map_err(|_| err())
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_disjoint_and_complete() {
        let targets: Vec<ImageRef> = (0..2000)
            .map(|i| {
                ImageRef::parse(&format!("r.io/mirror/team{}/app-{i}:v{}", i % 7, i % 13)).unwrap()
            })
            .collect();
        for count in [1u32, 2, 3, 4, 7, 16] {
            let shards: Vec<Shard> = (0..count).map(|i| Shard::new(i, count).unwrap()).collect();
            let mut sizes = vec![0usize; count as usize];
            for t in &targets {
                let owners: Vec<u32> = shards
                    .iter()
                    .filter(|s| s.owns(t))
                    .map(|s| s.index)
                    .collect();
                assert_eq!(owners.len(), 1, "{t} owned by {owners:?} of {count}");
                sizes[owners[0] as usize] += 1;
            }
            // Roughly even: no shard under half its fair share.
            let fair = targets.len() / count as usize;
            assert!(sizes.iter().all(|&n| n * 2 >= fair), "{count}: {sizes:?}");
        }
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            "1/4".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 4 }
        );
        for bad in ["4/4", "0/0", "x/2", "1", "-1/2", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn assignment_is_stable() {
        // Pinned: changing the hash would move images between shards.
        let owners: Vec<u32> = [
            "r.io/m/library/busybox:1.36",
            "r.io/m/bitnami/nginx:1.25",
            "r.io/m/a/b:c",
        ]
        .iter()
        .map(|t| {
            let t = ImageRef::parse(t).unwrap();
            (0..5)
                .find(|i| Shard::new(*i, 5).unwrap().owns(&t))
                .unwrap()
        })
        .collect();
        insta::assert_debug_snapshot!(owners);
    }
}
