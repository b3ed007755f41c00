//! Files of each kind the platform takes, built byte by byte (the edge and the origin
//! judge a file by its bytes): for the media tests, the audit test, the soak and the
//! media bench. Each holds fresh noise, so each is a new file (a new key).

use drops_shared::media::MediaType;
use rand::RngCore;

/// `n` random bytes.
pub fn noise(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(file: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    file.extend((data.len() as u32).to_be_bytes());
    let start = file.len();
    file.extend(kind);
    file.extend(data);
    let crc = crc32(&file[start..]);
    file.extend(crc.to_be_bytes());
}

/// A well-formed PNG of exactly `size` bytes (at least 57): signature, IHDR, one IDAT
/// of noise, IEND, each chunk with its CRC.
pub fn png_of_size(size: usize) -> Vec<u8> {
    assert!(size >= 57, "a PNG needs 57 bytes");
    let mut file = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut file, b"IHDR", &[0, 0, 1, 0, 0, 0, 1, 0, 8, 6, 0, 0, 0]);
    png_chunk(&mut file, b"IDAT", &noise(size - 57));
    png_chunk(&mut file, b"IEND", &[]);
    assert_eq!(file.len(), size);
    file
}

/// `size` bytes the edge takes for a PNG (it reads the signature): the signature, then
/// noise. Cheaper than [`png_of_size`] for large files, where only the kind matters.
pub fn png_headed(size: usize) -> Vec<u8> {
    let mut file = noise(size.max(8));
    file[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
    file
}

pub fn png() -> Vec<u8> {
    png_of_size(4_096)
}

pub fn jpeg() -> Vec<u8> {
    let mut file = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
    file.extend(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    file.extend([0xFF, 0xDA, 0x00, 0x08]);
    file.extend(noise(3_000));
    file.extend([0xFF, 0xD9]);
    file
}

pub fn webp() -> Vec<u8> {
    let frame = noise(2_000);
    let mut file = b"RIFF".to_vec();
    file.extend((4 + 8 + frame.len() as u32).to_le_bytes());
    file.extend(b"WEBPVP8 ");
    file.extend((frame.len() as u32).to_le_bytes());
    file.extend(frame);
    file
}

pub fn mp4() -> Vec<u8> {
    let mut file = 32u32.to_be_bytes().to_vec();
    file.extend(b"ftypisom");
    file.extend(0x200u32.to_be_bytes());
    file.extend(b"isomiso2avc1mp41");
    let media = noise(5_000);
    file.extend((8 + media.len() as u32).to_be_bytes());
    file.extend(b"mdat");
    file.extend(media);
    file
}

/// An EBML header naming `doc_type`, then a Segment of unknown size holding noise.
pub fn ebml(doc_type: &[u8]) -> Vec<u8> {
    let mut header =
        vec![0x42, 0x86, 0x81, 0x01, 0x42, 0xF7, 0x81, 0x01, 0x42, 0xF2, 0x81, 0x04, 0x42, 0xF3, 0x81, 0x08];
    header.extend([0x42, 0x82, 0x80 | doc_type.len() as u8]);
    header.extend(doc_type);
    header.extend([0x42, 0x87, 0x81, 0x04, 0x42, 0x85, 0x81, 0x02]);
    let mut file = vec![0x1A, 0x45, 0xDF, 0xA3, 0x80 | header.len() as u8];
    file.extend(header);
    file.extend([0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    file.extend(noise(4_000));
    file
}

pub fn webm() -> Vec<u8> {
    ebml(b"webm")
}

/// One file of each kind the platform takes.
pub fn one_of_each() -> Vec<(MediaType, Vec<u8>)> {
    vec![
        (MediaType::Png, png()),
        (MediaType::Jpeg, jpeg()),
        (MediaType::Webp, webp()),
        (MediaType::Mp4, mp4()),
        (MediaType::Webm, webm()),
    ]
}

#[cfg(test)]
mod tests {
    use drops_shared::media::MediaKey;

    use super::*;

    #[test]
    fn each_file_is_taken_as_its_kind_and_each_is_new() {
        for (kind, file) in one_of_each() {
            assert_eq!(MediaKey::of(&file).map(|k| k.kind()), Some(kind), "{kind:?}");
        }
        assert_ne!(png(), png(), "fresh noise: a new key each time");
        assert_eq!(MediaKey::of(&png_headed(1_000)).map(|k| k.kind()), Some(MediaType::Png));
    }
}
