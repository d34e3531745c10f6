// placeholder until the data branch lands
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub source: &'static str,
}
pub fn documented(_provider: &str, _model_type: &str, _region: &str) -> Option<Quota> {
    None
}
