//! Query-string parameters, each validated with a 400 that names it.

use std::collections::HashMap;
use std::str::FromStr;

use hyper::StatusCode;

use super::error::ApiError;
use crate::engine::{Mode, Preset, SearchParams};

pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn number<T: FromStr + PartialOrd + std::fmt::Display>(
        &self,
        name: &str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ApiError> {
        let Some(raw) = self.text(name) else { return Ok(default) };
        let value: T = raw
            .parse()
            .map_err(|_| ApiError::bad_parameter(name, format!("{raw:?} is not a number")))?;
        // Written so NaN, which compares false both ways, is refused too.
        if !(value >= min && value <= max) {
            return Err(ApiError::bad_parameter(
                name,
                format!("must be between {min} and {max}"),
            ));
        }
        Ok(value)
    }

    pub fn flag(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.text(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(other) => Err(ApiError::bad_parameter(name, format!("{other:?} is not true or false"))),
        }
    }

    fn choice<T: Copy>(&self, name: &str, choices: &[(&str, T)]) -> Result<Option<T>, ApiError> {
        let Some(raw) = self.text(name) else { return Ok(None) };
        choices
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(raw))
            .map(|(_, v)| Some(*v))
            .ok_or_else(|| {
                let names: Vec<_> = choices.iter().map(|(n, _)| *n).collect();
                ApiError::bad_parameter(name, format!("{raw:?} is not one of {}", names.join(", ")))
            })
    }

    /// The search parameters of CONTRACT §1: a preset sets both thresholds,
    /// an explicit threshold overrides its preset.
    pub fn search_params(&self) -> Result<SearchParams, ApiError> {
        let defaults = SearchParams::default();
        let mode = self.choice(
            "mode",
            &[
                ("fast", Mode::Fast),
                ("balanced", Mode::Balanced),
                ("precise", Mode::Precise),
            ],
        )?;
        let preset = self.choice(
            "preset",
            &[
                ("strict", Preset::Strict),
                ("version", Preset::Version),
                ("loose", Preset::Loose),
            ],
        )?;
        let (preset_duplicate, preset_similar) = preset
            .map(Preset::thresholds)
            .unwrap_or((defaults.duplicate_threshold, defaults.similar_threshold));
        let duplicate_threshold = self.number("duplicate_threshold", preset_duplicate, 0.0, 1.0)?;
        let similar_threshold = self.number("similar_threshold", preset_similar, 0.0, 1.0)?;
        if similar_threshold > duplicate_threshold {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_THRESHOLDS",
                format!(
                    "need 0 <= similar_threshold ({similar_threshold}) <= duplicate_threshold ({duplicate_threshold}) <= 1"
                ),
            ));
        }
        Ok(SearchParams {
            mode: mode.unwrap_or(defaults.mode),
            max_results: self.number("max_results", defaults.max_results, 1, 1000)?,
            duplicate_threshold,
            similar_threshold,
            preset,
            enable_precision: self.flag("enable_precision", defaults.enable_precision)?,
            precision_top_n: self.number("precision_top_n", defaults.precision_top_n, 1, 1000)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_set_thresholds_and_explicit_values_win() {
        let p = Query::parse(Some("preset=loose&mode=fast")).search_params().unwrap();
        assert_eq!(
            (p.duplicate_threshold, p.similar_threshold, p.mode),
            (0.90, 0.50, Mode::Fast)
        );
        let p = Query::parse(Some("preset=version&similar_threshold=0.6"))
            .search_params()
            .unwrap();
        assert_eq!((p.duplicate_threshold, p.similar_threshold), (0.95, 0.6));
        assert_eq!(Query::parse(None).search_params().unwrap(), SearchParams::default());
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (query, name) in [
            ("mode=slow", "mode"),
            ("max_results=0", "max_results"),
            ("max_results=ten", "max_results"),
            ("duplicate_threshold=1.5", "duplicate_threshold"),
            ("enable_precision=maybe", "enable_precision"),
            ("preset=lenient", "preset"),
            ("duplicate_threshold=NaN", "duplicate_threshold"),
            ("similar_threshold=inf", "similar_threshold"),
        ] {
            let err = Query::parse(Some(query)).search_params().unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(err.fields["parameter"], name, "{query}");
        }
        let err = Query::parse(Some("duplicate_threshold=0.5&similar_threshold=0.7"))
            .search_params()
            .unwrap_err();
        assert_eq!(err.code, Some("INVALID_THRESHOLDS"));
    }
}
