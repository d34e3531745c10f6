//! The rate limits the providers publish, as defaults for deployments that give none.
//!
//! Bailian counts requests and tokens per Alibaba Cloud root account and model, summed over
//! every RAM user, workspace and API key, and may enforce them per second as well (RPS =
//! RPM/60); tokens are input plus output, except for embedding and rerank models, which count
//! input only (research `bailian-batch-limits.md` §2.1). OpenSearch allows 3 requests a second
//! per service (seed 003).
//!
//! A default set too high is what goes wrong: the cluster sends faster than the account may,
//! and every backend backs off from 429s; one set too low only slows it. So where the Chinese
//! and English pages disagree, or a cell of the source table is merged and could be read two
//! ways, the lower figure is taken and the row says so. Where the research gives no figure the
//! answer is None: nothing documented, so nothing is guessed.
//!
//! The pages change often (they are dated in `source`); a DBA overrides a default per
//! deployment or turns it off.

use crate::registry::Provider;

/// A limit Bailian documents for a model (per account and model; research §2.1-2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub source: &'static str,
}

/// The Beijing figures, unless a row says otherwise (research S8b).
const ZH: &str = "Bailian rate limits (help.aliyun.com/zh/model-studio/rate-limit, 2026-02-24)";
/// The Singapore figures, and Beijing ones the Chinese page lacks (research S8a).
const EN: &str = "Bailian rate limits (alibabacloud.com/help/en/model-studio/rate-limit, about 2026-03)";
/// A Beijing row whose figures come partly from each page.
const ZH_EN: &str =
    "Bailian rate limits (help.aliyun.com/zh/model-studio/rate-limit, 2026-02-24; en page, about 2026-03)";
/// A Beijing row where the two pages disagree: the lower figure of each.
const LOWER: &str = "Bailian rate limits, lower of the zh (2026-02-24) and en (about 2026-03) pages";

/// Seed 003's table gives "3" once, in a cell merged over every service of the table.
const OPENSEARCH: Quota = Quota {
    requests_per_minute: Some(3 * 60),
    tokens_per_minute: None,
    source: "OpenSearch text generation: 3 requests/s per service (seed 003, 2025-08-06)",
};

/// A Bailian model's documented limits per region. Virginia (dashscope-us) has none: the
/// research gives figures for the "Global" deployment of two models only, not for the US
/// endpoint pg_bailian calls.
struct Row {
    model_type: &'static str,
    beijing: Option<Quota>,
    singapore: Option<Quota>,
}

const fn row(model_type: &'static str, beijing: Option<Quota>, singapore: Option<Quota>) -> Row {
    Row { model_type, beijing, singapore }
}

const fn q(rpm: u32, tpm: u32, source: &'static str) -> Option<Quota> {
    Some(Quota { requests_per_minute: Some(rpm), tokens_per_minute: Some(tpm), source })
}

/// A limit on requests only.
const fn rpm(rpm: u32, source: &'static str) -> Option<Quota> {
    Some(Quota { requests_per_minute: Some(rpm), tokens_per_minute: None, source })
}

/// Every Bailian model of the registry, in its order: research §2.2 (RPM, TPM).
static BAILIAN: &[Row] = &[
    row("qwen3-max", q(30_000, 5_000_000, ZH), q(600, 1_000_000, EN)),
    row("qwen3-max-2026-01-23", q(600, 1_000_000, ZH), q(600, 1_000_000, EN)),
    row("qwen3-max-preview", q(600, 1_000_000, ZH), q(600, 1_000_000, EN)),
    // Beijing TPM: merged cell on the zh page; the en page's 1,000,000.
    row("qwen-max", q(1_200, 1_000_000, ZH_EN), q(120, 100_000, EN)),
    // Beijing RPM: merged with qwen-max's 1,200 on the zh page; TPM from the en page.
    row("qwen-max-latest", q(1_200, 1_000_000, ZH_EN), q(600, 1_000_000, EN)),
    row("qwen-plus", q(30_000, 5_000_000, ZH), q(600, 1_000_000, EN)),
    row("qwen-plus-latest", q(15_000, 1_200_000, ZH), q(600, 1_000_000, EN)),
    row("qwen-flash", q(30_000, 10_000_000, ZH), q(600, 5_000_000, EN)),
    row("qwen-long", q(1_200, 3_000_000, ZH), None),
    // Ambiguous: RPM is a merged cell, read as qwen-long's 1,200 (no other figure is given);
    // TPM is printed 60,000, far below qwen-long's 3,000,000: the lower is kept.
    row("qwen-long-latest", q(1_200, 60_000, ZH), None),
    row("qwq-plus", q(600, 1_000_000, ZH), q(60, 100_000, EN)),
    row("qwq-plus-latest", q(600, 1_000_000, ZH), q(60, 100_000, EN)),
    row("deepseek-v3.2", q(15_000, 1_200_000, ZH), q(10_000, 1_200_000, EN)),
    row("deepseek-v3.2-exp", q(15_000, 1_200_000, ZH), None),
    // Merged with the deepseek-v3.2 / -exp / r1 cells on the zh page (the same 15,000 / 1.2M).
    row("deepseek-v3.1", q(15_000, 1_200_000, ZH), None),
    row("deepseek-r1", q(15_000, 1_200_000, ZH), None),
    row("deepseek-r1-0528", q(60, 100_000, ZH), None),
    // Merged cell, as deepseek-v3.1.
    row("deepseek-v3", q(15_000, 1_200_000, ZH), None),
    row("deepseek-r1-distill-qwen-1.5b", q(60, 100_000, ZH), None),
    // The 7b, 14b and 32b distills: merged cell, as deepseek-v3.1.
    row("deepseek-r1-distill-qwen-7b", q(15_000, 1_200_000, ZH), None),
    row("deepseek-r1-distill-qwen-14b", q(15_000, 1_200_000, ZH), None),
    row("deepseek-r1-distill-qwen-32b", q(15_000, 1_200_000, ZH), None),
    // Kimi: zh 60 / 100,000, en 500 / 1,000,000; the lower.
    row("kimi-k2-thinking", q(60, 100_000, LOWER), None),
    row("Moonshot-Kimi-K2-Instruct", q(60, 100_000, LOWER), None),
    // GLM: zh 60 / 1,000,000 for all three; en agrees for glm-4.6 and says 500 RPM for glm-4.7
    // and glm-5 (500 / 1M): the lower.
    row("glm-4.6", q(60, 1_000_000, ZH), None),
    row("glm-4.7", q(60, 1_000_000, LOWER), None),
    row("glm-5", q(60, 1_000_000, LOWER), None),
    row("MiniMax-M2.1", q(60, 100_000, ZH), None),
    // zh 60 / 1,000,000, en 500 / 1,000,000: the lower.
    row("MiniMax-M2.5", q(60, 1_000_000, LOWER), None),
    // Served by MiniMax itself: its own row on the zh page.
    row("MiniMax/MiniMax-M2.1", q(500, 2_000_000, ZH), None),
    row("MiniMax/MiniMax-M2.5", q(500, 2_000_000, ZH), None),
    // The open-source Qwen3-VL sizes: Beijing RPM from the zh page, TPM from the en page.
    row("qwen3-vl-235b-a22b-instruct", q(60, 100_000, ZH_EN), q(60, 100_000, EN)),
    row("qwen3-vl-235b-a22b-thinking", q(60, 100_000, ZH_EN), q(60, 100_000, EN)),
    row("qwen3-vl-32b-instruct", q(600, 1_000_000, ZH_EN), q(60, 100_000, EN)),
    row("qwen3-vl-32b-thinking", q(600, 1_000_000, ZH_EN), q(60, 100_000, EN)),
    row("qwen3-vl-8b-instruct", q(600, 1_000_000, ZH_EN), q(60, 100_000, EN)),
    row("qwen3-vl-8b-thinking", q(600, 1_000_000, ZH_EN), q(60, 100_000, EN)),
    row("qwen3-vl-plus", q(3_000, 5_000_000, ZH), q(1_200, 1_000_000, EN)),
    row("qwen3-vl-flash", q(3_000, 5_000_000, ZH), q(1_200, 1_000_000, EN)),
    row("qwen-vl-ocr", q(600, 6_000_000, ZH), q(600, 6_000_000, EN)),
    // TPM is a merged cell, read as qwen-vl-ocr's 6,000,000 (no other figure is given).
    row("qwen-vl-ocr-latest", q(1_200, 6_000_000, ZH), None),
    row("qwen3-omni-flash", q(60, 100_000, ZH), q(60, 100_000, EN)),
    // Qwen-MT, Beijing: RPM 60 (zh), TPM per model from the en page.
    row("qwen-mt-plus", q(60, 25_000, ZH_EN), q(60, 100_000, EN)),
    row("qwen-mt-flash", q(60, 35_000, ZH_EN), q(60, 100_000, EN)),
    row("qwen-mt-turbo", q(60, 35_000, ZH_EN), q(60, 100_000, EN)),
    row("qwen-mt-lite", q(60, 100_000, ZH_EN), q(60, 100_000, EN)),
    // Text embedding, Beijing: documented as 30 requests per second; TPM counts input only.
    row("text-embedding-v1", q(30 * 60, 1_200_000, ZH), None),
    row("text-embedding-v2", q(30 * 60, 1_200_000, ZH), None),
    row("text-embedding-v3", q(30 * 60, 1_200_000, ZH), q(6_000, 24_000_000, EN)),
    row("text-embedding-v4", q(30 * 60, 1_200_000, ZH), q(1_800, 1_000_000, EN)),
    row("tongyi-embedding-vision-plus", q(600, 200_000, ZH), None),
    row("tongyi-embedding-vision-flash", q(600, 200_000, ZH), None),
    row("multimodal-embedding-v1", q(120, 200_000, ZH), None),
    // zh 1,200 / 600,000, en 2,400 / 1,200,000: the lower.
    row("qwen3-vl-embedding", q(1_200, 600_000, LOWER), None),
    // Rerank TPM is printed 4,980,000,000 (gte) and 5,000,000,000 (qwen3): past what a u32
    // holds, and no limit in effect (at ~5,000 requests a minute it binds only past ~1,000,000
    // tokens a request; gte-rerank-v2 takes at most 30,000), so requests only.
    row("gte-rerank-v2", rpm(5_040, ZH), rpm(5_040, EN)),
    row("qwen3-rerank", rpm(5_400, ZH), rpm(5_400, EN)),
];

/// The limit the provider documents for `model_type` in `region`, or None where it documents
/// none. region: "beijing" | "singapore" | "virginia"; provider: "bailian" | "opensearch".
/// OpenSearch's limit is per service wherever it runs, so its region is not looked at.
pub fn documented(provider: &str, model_type: &str, region: &str) -> Option<Quota> {
    match Provider::parse(provider)? {
        Provider::OpenSearch => {
            crate::registry::find_at(Provider::OpenSearch, model_type).map(|_| OPENSEARCH)
        }
        Provider::Bailian => {
            let row = BAILIAN.iter().find(|r| r.model_type == model_type)?;
            match region {
                "beijing" => row.beijing,
                "singapore" => row.singapore,
                // Virginia: nothing documented (see `Row`); any other name is no region of ours.
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MODELS;
    use std::collections::HashSet;

    const REGIONS: [&str; 3] = ["beijing", "singapore", "virginia"];

    /// Bailian models the research gives no Singapore figure for. A new model must land here
    /// or in the table: the test below fails until someone decides.
    const NO_SINGAPORE: &[&str] = &[
        "qwen-long",
        "qwen-long-latest",
        "deepseek-v3.2-exp",
        "deepseek-v3.1",
        "deepseek-r1",
        "deepseek-r1-0528",
        "deepseek-v3",
        "deepseek-r1-distill-qwen-1.5b",
        "deepseek-r1-distill-qwen-7b",
        "deepseek-r1-distill-qwen-14b",
        "deepseek-r1-distill-qwen-32b",
        "kimi-k2-thinking",
        "Moonshot-Kimi-K2-Instruct",
        "glm-4.6",
        "glm-4.7",
        "glm-5",
        "MiniMax-M2.1",
        "MiniMax-M2.5",
        "MiniMax/MiniMax-M2.1",
        "MiniMax/MiniMax-M2.5",
        "qwen-vl-ocr-latest",
        "text-embedding-v1",
        "text-embedding-v2",
        "tongyi-embedding-vision-plus",
        "tongyi-embedding-vision-flash",
        "multimodal-embedding-v1",
        "qwen3-vl-embedding",
    ];

    /// Bailian models with no Beijing figure: none today; the same rule as above.
    const NO_BEIJING: &[&str] = &[];

    fn limits(model_type: &str, region: &str) -> (Option<u32>, Option<u32>) {
        let q = documented("bailian", model_type, region).unwrap();
        (q.requests_per_minute, q.tokens_per_minute)
    }

    #[test]
    fn spot_checks_per_family() {
        assert_eq!(limits("qwen3-max", "beijing"), (Some(30_000), Some(5_000_000)));
        assert_eq!(limits("qwen3-max", "singapore"), (Some(600), Some(1_000_000)));
        assert_eq!(limits("qwen-max", "singapore"), (Some(120), Some(100_000)));
        assert_eq!(limits("qwen-flash", "beijing"), (Some(30_000), Some(10_000_000)));
        assert_eq!(limits("qwq-plus", "singapore"), (Some(60), Some(100_000)));
        assert_eq!(limits("deepseek-r1", "beijing"), (Some(15_000), Some(1_200_000)));
        assert_eq!(limits("deepseek-r1-0528", "beijing"), (Some(60), Some(100_000)));
        assert_eq!(limits("kimi-k2-thinking", "beijing"), (Some(60), Some(100_000)), "the lower page");
        assert_eq!(limits("glm-5", "beijing"), (Some(60), Some(1_000_000)), "the lower page");
        assert_eq!(limits("MiniMax/MiniMax-M2.5", "beijing"), (Some(500), Some(2_000_000)));
        assert_eq!(limits("qwen3-vl-plus", "singapore"), (Some(1_200), Some(1_000_000)));
        assert_eq!(limits("qwen-mt-plus", "beijing"), (Some(60), Some(25_000)));
        assert_eq!(limits("text-embedding-v1", "beijing"), (Some(1_800), Some(1_200_000)), "RPS 30");
        assert_eq!(limits("text-embedding-v4", "beijing"), (Some(1_800), Some(1_200_000)), "RPS 30");
        assert_eq!(limits("text-embedding-v3", "singapore"), (Some(6_000), Some(24_000_000)));
        assert_eq!(limits("qwen3-vl-embedding", "beijing"), (Some(1_200), Some(600_000)), "the lower page");
        assert_eq!(limits("gte-rerank-v2", "beijing"), (Some(5_040), None));
        assert_eq!(documented("bailian", "qwen-plus", "beijing").unwrap().source, ZH);
        assert_eq!(documented("bailian", "qwen-plus", "singapore").unwrap().source, EN);
        assert_eq!(documented("bailian", "glm-5", "beijing").unwrap().source, LOWER);
    }

    #[test]
    fn opensearch_allows_three_requests_a_second_per_service() {
        let services: Vec<_> = MODELS.iter().filter(|m| m.provider == Provider::OpenSearch).collect();
        assert_eq!(services.len(), 10);
        for m in services {
            for region in REGIONS {
                let q = documented("opensearch", m.model_type, region).unwrap();
                assert_eq!((q.requests_per_minute, q.tokens_per_minute), (Some(180), None));
            }
        }
        assert_eq!(documented("opensearch", "qwen-flash", "beijing"), None, "not an OpenSearch service");
    }

    #[test]
    fn unknown_models_regions_and_providers_have_none() {
        assert_eq!(documented("bailian", "qwen-turbo", "beijing"), None, "OpenSearch only in the registry");
        assert_eq!(documented("bailian", "QWEN-PLUS", "beijing"), None, "ids are exact");
        assert_eq!(documented("bailian", "qwen-plus", "hangzhou"), None);
        assert_eq!(documented("openai", "qwen-plus", "beijing"), None);
        for m in MODELS {
            assert_eq!(documented("bailian", m.model_type, "virginia"), None, "{}", m.model_type);
        }
    }

    #[test]
    fn every_registry_model_is_in_the_table_or_consciously_absent() {
        let bailian: HashSet<_> =
            MODELS.iter().filter(|m| m.provider == Provider::Bailian).map(|m| m.model_type).collect();
        let rows: Vec<_> = BAILIAN.iter().map(|r| r.model_type).collect();
        assert_eq!(rows.iter().collect::<HashSet<_>>().len(), rows.len(), "a model listed twice");
        for r in &rows {
            assert!(bailian.contains(r), "{r} is not a Bailian model of the registry");
        }
        for absent in NO_SINGAPORE.iter().chain(NO_BEIJING) {
            assert!(bailian.contains(absent), "{absent} is not a Bailian model of the registry");
        }
        for m in &bailian {
            for (region, absent) in [("beijing", NO_BEIJING), ("singapore", NO_SINGAPORE)] {
                let found = documented("bailian", m, region).is_some();
                assert_eq!(found, !absent.contains(m), "{m} in {region}: add it to the table or to the list");
            }
        }
    }

    #[test]
    fn no_zero_and_no_empty_limits() {
        let all = BAILIAN.iter().flat_map(|r| [r.beijing, r.singapore]).flatten().chain([OPENSEARCH]);
        for q in all {
            assert!(q.requests_per_minute.is_some() || q.tokens_per_minute.is_some(), "{q:?}");
            assert_ne!(q.requests_per_minute, Some(0), "{q:?}");
            assert_ne!(q.tokens_per_minute, Some(0), "{q:?}");
            assert!(!q.source.is_empty());
        }
    }
}
