//! Qwen-Omni's spoken answers. The Qwen-Omni page decodes the concatenated `delta.audio.data`
//! strings with `np.frombuffer(wav_bytes, dtype=np.int16)` and writes them at
//! `samplerate=24000`: headerless 16-bit mono PCM at 24 kHz, whatever `format` says (only
//! `"wav"` is accepted). Little-endian is what numpy reads on the platforms that sample runs on.

use crate::b64;

/// Samples per second of the PCM the stand-in streams.
pub const AUDIO_SAMPLE_RATE: u32 = 24_000;

/// Samples spoken per character of the answer (50 ms).
const SAMPLES_PER_CHAR: usize = 1_200;

/// Bytes of PCM per `delta.audio.data` chunk: 100 ms, and a multiple of 3 so every chunk but
/// the last encodes to base64 without padding. The documented client concatenates the base64
/// strings before decoding them, which only works when no chunk but the last is padded.
const CHUNK_BYTES: usize = 4_800;

/// The whole PCM (16-bit little-endian mono at [`AUDIO_SAMPLE_RATE`]) the stand-in speaks
/// `text` with in `voice`: a triangle wave per character whose pitch comes from the character
/// and the voice, computed in integers so it is the same on every platform.
pub fn audio_pcm(text: &str, voice: &str) -> Vec<u8> {
    let voice_seed = voice.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let mut out = Vec::with_capacity(text.chars().count() * SAMPLES_PER_CHAR * 2);
    for c in text.chars() {
        let period = 20 + (u32::from(c).wrapping_add(voice_seed) % 80) as usize;
        let half = period / 2;
        for t in 0..SAMPLES_PER_CHAR {
            let phase = t % period;
            let ramp = if phase < half { phase } else { period - phase };
            let sample = (ramp as i32 * 16_000 / half.max(1) as i32 - 8_000) as i16;
            out.extend_from_slice(&sample.to_le_bytes());
        }
    }
    out
}

/// `pcm` as the base64 strings of successive `delta.audio.data` chunks.
pub(crate) fn chunks(pcm: &[u8]) -> Vec<String> {
    pcm.chunks(CHUNK_BYTES).map(b64::encode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_chunks_decode_to_the_pcm() {
        let pcm = audio_pcm("Echo from qwen3-omni-flash: hi", "Cherry");
        assert_eq!(pcm.len(), 30 * SAMPLES_PER_CHAR * 2);
        assert_ne!(pcm, audio_pcm("Echo from qwen3-omni-flash: hi", "Ethan"), "voices differ");
        let joined: String = chunks(&pcm).concat();
        assert_eq!(b64::decode(&joined).unwrap(), pcm);
    }
}
