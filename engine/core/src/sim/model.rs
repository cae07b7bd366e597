//! The checker's independent model of the primary: a plain image per volume, updated in
//! seq order as writes are accepted, and for every history (generation) the digest of
//! the whole group's image at its start and at the end of each of its closed data sets.
//! A new generation (the primary restarted after a crash, or cut its stream) starts from
//! the primary's volumes as they stand. It shares no code with the engine.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};

use crate::protocol::{DataSetId, GenerationId, Seq};

#[derive(Debug)]
pub struct Model {
    volumes: Vec<Vec<u8>>,
    last_write: Seq,
    current: GenerationId,
    /// Per generation: its parent, and the digests of its image at its start (index 0)
    /// and at the end of data set `i` (index `i`).
    histories: BTreeMap<GenerationId, (GenerationId, Vec<u64>)>,
    zero_digest: u64,
}

/// Digest of a group image (all volumes in order).
pub fn digest<'a>(volumes: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hasher = DefaultHasher::new();
    for volume in volumes {
        hasher.write(volume);
        hasher.write_usize(volume.len());
    }
    hasher.finish()
}

impl Model {
    /// A primary whose history `generation` begins with `image`.
    pub fn new(generation: GenerationId, image: Vec<Vec<u8>>) -> Model {
        let zero: Vec<Vec<u8>> = image.iter().map(|v| vec![0; v.len()]).collect();
        let zero_digest = digest(zero.iter().map(Vec::as_slice));
        let mut model = Model {
            volumes: image,
            last_write: Seq::NONE,
            current: GenerationId::NONE,
            histories: BTreeMap::new(),
            zero_digest,
        };
        model.begin(generation, None);
        model
    }

    /// A new generation begins, descending from the current one, with the primary's
    /// volumes as `image` (after a crash: what its disks kept) or as the model has them.
    pub fn begin(&mut self, generation: GenerationId, image: Option<Vec<Vec<u8>>>) {
        assert!(
            !self.histories.contains_key(&generation),
            "{generation} began twice"
        );
        if let Some(image) = image {
            self.volumes = image;
        }
        self.last_write = Seq::NONE;
        let start = digest(self.volumes.iter().map(Vec::as_slice));
        self.histories
            .insert(generation, (self.current, vec![start]));
        self.current = generation;
    }

    /// The primary started again on `generation` at `data_set` (a clean stop before the
    /// crash, which left nothing written or sent past it): what it closed after that is
    /// gone, and its volumes are `image`.
    pub fn resume(&mut self, generation: GenerationId, data_set: DataSetId, image: Vec<Vec<u8>>) {
        assert_eq!(generation, self.current, "only the current history resumes");
        let closed = &mut self.histories.get_mut(&generation).expect("current").1;
        closed.truncate(data_set.0 as usize + 1);
        assert_eq!(
            closed.last().copied(),
            Some(digest(image.iter().map(Vec::as_slice))),
            "a resumed history's volumes are its image at the data set it resumes at"
        );
        self.volumes = image;
        self.last_write = crate::protocol::Seq::NONE;
    }

    pub fn current(&self) -> GenerationId {
        self.current
    }

    pub fn write(
        &mut self,
        seq: Seq,
        volume: usize,
        offset: u64,
        data: &[u8],
    ) -> Result<(), String> {
        if seq <= self.last_write {
            return Err(format!("write got {seq} after {}", self.last_write));
        }
        self.last_write = seq;
        let at = offset as usize;
        self.volumes[volume][at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// A range zeroed (NBD's WRITE_ZEROES or TRIM), in seq order with the writes.
    pub fn zero(&mut self, seq: Seq, volume: usize, offset: u64, len: u64) -> Result<(), String> {
        if seq <= self.last_write {
            return Err(format!("zeroing got {seq} after {}", self.last_write));
        }
        self.last_write = seq;
        let at = offset as usize;
        self.volumes[volume][at..at + len as usize].fill(0);
        Ok(())
    }

    /// The primary closed `data_set` of the current generation with its sync at
    /// `sync_seq`: data sets close in order, after every write accepted so far (a resync's
    /// records, which change nothing, may sit between).
    pub fn close(&mut self, data_set: DataSetId, sync_seq: Seq) -> Result<(), String> {
        let image = digest(self.volumes.iter().map(Vec::as_slice));
        let closed = &mut self.histories.get_mut(&self.current).expect("current").1;
        if data_set.0 != closed.len() as u64 {
            return Err(format!(
                "closed {data_set} after {} data sets",
                closed.len() - 1
            ));
        }
        if sync_seq <= self.last_write {
            return Err(format!(
                "{data_set} closed at {sync_seq} but the last write is {}",
                self.last_write
            ));
        }
        closed.push(image);
        Ok(())
    }

    /// The last closed data set of the current generation.
    pub fn last_closed(&self) -> DataSetId {
        DataSetId(self.histories[&self.current].1.len() as u64 - 1)
    }

    /// Digest of the image at the end of `data_set` of `generation` (data set 0: its
    /// start; `(NONE, 0)`: the all-zero image).
    pub fn digest_at(&self, generation: GenerationId, data_set: DataSetId) -> Option<u64> {
        if generation == GenerationId::NONE {
            return (data_set == DataSetId::NONE).then_some(self.zero_digest);
        }
        let (_, closed) = self.histories.get(&generation)?;
        closed.get(usize::try_from(data_set.0).ok()?).copied()
    }

    /// Whether `later` is `earlier` or descends from it (`NONE`, the zero image, comes
    /// before every history).
    pub fn descends(&self, later: GenerationId, earlier: GenerationId) -> bool {
        let mut at = later;
        loop {
            if at == earlier || earlier == GenerationId::NONE {
                return true;
            }
            match self.histories.get(&at) {
                Some(&(parent, _)) if parent != GenerationId::NONE => at = parent,
                _ => return false,
            }
        }
    }

    pub fn image(&self) -> &[Vec<u8>] {
        &self.volumes
    }
}
