//! An export in memory that counts flushes, for the server's and the client's tests.

use std::sync::Mutex;

use crate::export::Export;

pub(crate) struct MemExport {
    name: &'static str,
    block_size: u32,
    max_request_bytes: u32,
    pub(crate) data: Mutex<Vec<u8>>,
    pub(crate) flushes: Mutex<u32>,
}

impl MemExport {
    /// A zeroed export of `size` bytes, leaked so a server thread may borrow it.
    pub(crate) fn leaked(
        name: &'static str,
        size: usize,
        block_size: u32,
        max_request_bytes: u32,
    ) -> &'static MemExport {
        Box::leak(Box::new(MemExport {
            name,
            block_size,
            max_request_bytes,
            data: Mutex::new(vec![0; size]),
            flushes: Mutex::new(0),
        }))
    }
}

impl Export for MemExport {
    fn name(&self) -> &str {
        self.name
    }
    fn size_bytes(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn max_request_bytes(&self) -> u32 {
        self.max_request_bytes
    }
    fn read(&self, offset: u64, buf: &mut Vec<u8>) -> Result<(), u32> {
        let data = self.data.lock().unwrap();
        let len = buf.len();
        buf.copy_from_slice(&data[offset as usize..offset as usize + len]);
        Ok(())
    }
    fn write(&self, offset: u64, bytes: &mut Vec<u8>, _fua: bool) -> Result<(), u32> {
        let mut data = self.data.lock().unwrap();
        data[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
    fn flush(&self) -> Result<(), u32> {
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }
}
