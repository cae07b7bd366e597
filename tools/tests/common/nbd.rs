//! A minimal blocking NBD client for tests: fixed newstyle with NBD_OPT_EXPORT_NAME, then
//! one request at a time (queue depth 1), so the test knows exactly which writes were
//! acknowledged. Numbers from the NBD protocol document.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const OPT_EXPORT_NAME: u32 = 1;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

#[derive(Debug)]
pub struct NbdClient {
    stream: TcpStream,
    handle: u64,
    pub size_bytes: u64,
}

impl NbdClient {
    pub fn connect(addr: SocketAddr, export: &str) -> std::io::Result<NbdClient> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting)?;
        assert_eq!(
            u64::from_be_bytes(greeting[..8].try_into().unwrap()),
            NBDMAGIC
        );
        assert_eq!(
            u64::from_be_bytes(greeting[8..16].try_into().unwrap()),
            IHAVEOPT
        );
        let server_flags = u16::from_be_bytes([greeting[16], greeting[17]]);
        let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
        let client_flags: u32 = if no_zeroes { 0b11 } else { 0b01 };
        stream.write_all(&client_flags.to_be_bytes())?;
        let mut option = Vec::new();
        option.extend_from_slice(&IHAVEOPT.to_be_bytes());
        option.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        option.extend_from_slice(&(export.len() as u32).to_be_bytes());
        option.extend_from_slice(export.as_bytes());
        stream.write_all(&option)?;
        let mut reply = [0u8; 10];
        stream.read_exact(&mut reply)?;
        if !no_zeroes {
            stream.read_exact(&mut [0u8; 124])?;
        }
        Ok(NbdClient {
            stream,
            handle: 0,
            size_bytes: u64::from_be_bytes(reply[..8].try_into().unwrap()),
        })
    }

    fn request(
        &mut self,
        command: u16,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> std::io::Result<u32> {
        self.handle += 1;
        let mut header = Vec::with_capacity(28 + data.len());
        header.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&command.to_be_bytes());
        header.extend_from_slice(&self.handle.to_be_bytes());
        header.extend_from_slice(&offset.to_be_bytes());
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(data);
        self.stream.write_all(&header)?;
        if command == CMD_DISC {
            return Ok(0);
        }
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply)?;
        assert_eq!(
            u32::from_be_bytes(reply[..4].try_into().unwrap()),
            REPLY_MAGIC
        );
        assert_eq!(
            u64::from_be_bytes(reply[8..].try_into().unwrap()),
            self.handle
        );
        Ok(u32::from_be_bytes(reply[4..8].try_into().unwrap()))
    }

    /// Writes and waits for the acknowledgement; `Ok(errno)` for a refusal.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<u32> {
        self.request(CMD_WRITE, offset, data.len() as u32, data)
    }

    pub fn read(&mut self, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
        let error = self.request(CMD_READ, offset, len, &[])?;
        assert_eq!(error, 0, "read at {offset} failed with errno {error}");
        let mut data = vec![0u8; len as usize];
        self.stream.read_exact(&mut data)?;
        Ok(data)
    }

    pub fn flush(&mut self) -> std::io::Result<u32> {
        self.request(CMD_FLUSH, 0, 0, &[])
    }

    pub fn disconnect(mut self) {
        let _ = self.request(CMD_DISC, 0, 0, &[]);
    }
}
