//! A WAV file around raw PCM. Qwen-Omni streams its spoken answer as base64 pieces of headerless
//! 16-bit little-endian mono PCM at 24 kHz, even with `"format": "wav"`: Bailian's Qwen-Omni
//! guide decodes the joined pieces as int16 and writes them at `samplerate=24000`.

/// Qwen-Omni's output sample rate (Hz), from the guide's example.
pub const OMNI_SAMPLE_RATE: u32 = 24_000;

/// A RIFF/WAVE file: PCM, one channel, 16 bits per sample, at `sample_rate`. An odd trailing
/// byte (half a sample) is dropped.
/// The copy is reserved fallibly: the audio is as long as the answer made it (within the
/// answer's size limit), and memory that cannot be had is an error, not an abort.
pub fn wav_from_pcm16(pcm: &[u8], sample_rate: u32) -> Result<Vec<u8>, crate::AiError> {
    let data = &pcm[..pcm.len() & !1];
    let data_len = u32::try_from(data.len()).unwrap_or(u32::MAX - 36) & !1;
    let data = &data[..data_len as usize];
    let (channels, bits): (u16, u16) = (1, 16);
    let block_align = channels * bits / 8;
    let mut out = crate::limits::vec_with_capacity("the WAV file of an answer", 44 + data.len())?;
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * u32::from(block_align)).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_describes_the_samples() {
        let wav = wav_from_pcm16(&[1, 0, 2, 0, 9], OMNI_SAMPLE_RATE).unwrap();
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(wav[4..8].try_into().unwrap()), 36 + 4);
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes(wav[22..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 24_000);
        assert_eq!(u32::from_le_bytes(wav[28..32].try_into().unwrap()), 48_000);
        assert_eq!(u16::from_le_bytes(wav[34..36].try_into().unwrap()), 16);
        assert_eq!(&wav[36..40], b"data");
        assert_eq!(u32::from_le_bytes(wav[40..44].try_into().unwrap()), 4);
        assert_eq!(&wav[44..], &[1, 0, 2, 0]);
    }
}
