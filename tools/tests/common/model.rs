//! The model a killed-secondary test checks the invariant against: a queue-depth-1 NBD
//! client logs every write (block and crc) before sending it; a replica's per-block crcs
//! must then equal the image after some prefix of those writes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::nbd::NbdClient;
use super::{assert_verifies, number, wait_until, write_data, Daemon, Pair, BLOCK, CATCH_UP};

/// What a queue-depth-1 client wrote: block and crc of every write in submission order
/// (a write is logged before it is sent), and how many were acknowledged.
#[derive(Debug, Default)]
pub struct Model {
    pub writes: Mutex<Vec<(usize, u32)>>,
    pub acked: AtomicUsize,
    pub stop: AtomicBool,
}

pub const MODEL_BLOCKS: usize = 512;

/// Writes unique blocks at random places, flushing every 8 writes, until told to stop.
pub fn model_writer(client: &mut NbdClient, model: &Model, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut index = 0u64;
    while !model.stop.load(Ordering::Relaxed) {
        let block = rng.random_range(0..MODEL_BLOCKS);
        let data = write_data(index);
        model
            .writes
            .lock()
            .unwrap()
            .push((block, crc32c::crc32c(&data)));
        let error = client.write((block * BLOCK) as u64, &data).unwrap();
        assert_eq!(error, 0, "write {index} refused");
        index += 1;
        model.acked.store(index as usize, Ordering::Relaxed);
        if index.is_multiple_of(8) {
            assert_eq!(client.flush().unwrap(), 0);
        }
    }
}

/// The largest prefix of `writes` whose image has exactly the crcs `replica` (one per
/// block), or `None` if no prefix does.
pub fn matching_prefix(replica: &[u32], writes: &[(usize, u32)]) -> Option<usize> {
    let zero = crc32c::crc32c(&[0u8; BLOCK]);
    let mut image = vec![zero; replica.len()];
    let mut mismatched = image.iter().zip(replica).filter(|(a, b)| a != b).count();
    let mut found = (mismatched == 0).then_some(0);
    for (i, &(block, crc)) in writes.iter().enumerate() {
        let before = image[block] == replica[block];
        image[block] = crc;
        let after = image[block] == replica[block];
        match (before, after) {
            (true, false) => mismatched += 1,
            (false, true) => mismatched -= 1,
            _ => {}
        }
        if mismatched == 0 {
            found = Some(i + 1);
        }
    }
    found
}

/// The secondary's replica, block by block, and the data set it is the image of.
pub fn replica_digest(secondary: &Daemon) -> (u64, Vec<u32>) {
    let digest = secondary.digest(4096);
    let crcs = digest["volumes"][0]["crc32c"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    (number(&digest, &["data_set"]), crcs)
}

/// SIGKILLs `pair`'s secondary `rounds` times while a queue-depth-1 client writes to volume
/// `data` (flushing every 8 writes); after each restart the recovered replica is the image
/// after a prefix of the writes, never going back. Then the writes stop, the secondary
/// catches up, `ordo verify` passes, and the model's final image is returned.
pub fn kill_secondary_while_writing(pair: &mut Pair, rounds: usize) -> Vec<u8> {
    let model = Arc::new(Model::default());
    let writer = {
        let (model, nbd) = (Arc::clone(&model), pair.nbd);
        std::thread::spawn(move || {
            let mut client = NbdClient::connect(nbd, "data").unwrap();
            model_writer(&mut client, &model, 7);
            assert_eq!(client.flush().unwrap(), 0);
            client.disconnect();
        })
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (mut last_prefix, mut last_data_set) = (0, 0);
    for round in 0..rounds {
        // Let the workload run a while, then pull the plug.
        let written = model.acked.load(Ordering::Relaxed);
        let more = rng.random_range(20..120);
        wait_until(
            "the client wrote some more",
            Duration::from_secs(60),
            || model.acked.load(Ordering::Relaxed) >= written + more,
        );
        pair.secondary.kill9();
        pair.secondary.restart();
        let (data_set, crcs) = replica_digest(&pair.secondary);
        let writes = model.writes.lock().unwrap().clone();
        let prefix = matching_prefix(&crcs, &writes).unwrap_or_else(|| {
            panic!(
                "round {round}: the replica at data set {data_set} is no prefix of the {} writes",
                writes.len()
            )
        });
        assert!(
            prefix >= last_prefix,
            "round {round}: the replica went back from {last_prefix} writes to {prefix}"
        );
        assert!(
            data_set >= last_data_set,
            "round {round}: applied went back"
        );
        (last_prefix, last_data_set) = (prefix, data_set);
    }
    assert!(last_prefix > 0, "the replica never received anything");
    model.stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    pair.wait_caught_up(CATCH_UP);
    assert_verifies(pair);
    let writes = model.writes.lock().unwrap().clone();
    let mut image = vec![0u8; MODEL_BLOCKS * BLOCK];
    for (index, &(block, _)) in writes.iter().enumerate() {
        image[block * BLOCK..(block + 1) * BLOCK].copy_from_slice(&write_data(index as u64));
    }
    image
}
