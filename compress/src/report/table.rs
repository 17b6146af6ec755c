//! The report as text: a fixed-width table for the terminal and pretty JSON for the file
//! written next to the compressed model.

use super::units::sci;
use super::Report;

impl Report {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        let (before, after, cost) = self.totals();
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("params_before".into(), before.into());
            o.insert("params_after".into(), after.into());
            o.insert("cost_after".into(), cost.into());
        }
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into())
    }

    /// A fixed-width text table.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), sci);
        let mut s = format!(
            "{:<22} {:>10} {:<15} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>4} {:>5} {:>9}\n",
            "layer",
            "shape",
            "kind",
            "rank",
            "nnz",
            "params",
            "after",
            "err fit",
            "err val",
            "comp fit",
            "comp val",
            "kept",
            "dtype",
            "quant err"
        );
        for l in &self.layers {
            let comp_fit = match (l.compensation_fit_before, l.compensation_fit_after) {
                (Some(_), Some(a)) => opt(Some(a)),
                _ => "-".into(),
            };
            s.push_str(&format!(
                "{:<22} {:>10} {:<15} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>4} {:>5} {:>9}\n",
                l.name,
                format!("{}x{}", l.out_features, l.in_features),
                l.kind.name(),
                l.rank,
                l.nnz,
                l.params_before,
                l.params_after,
                if l.is_dense() { "-".into() } else { sci(l.error_fit) },
                opt(l.error_val),
                comp_fit,
                opt(l.compensation_val_after),
                match l.compensation_kept {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "-",
                },
                if l.dtype.is_empty() { "-" } else { l.dtype.as_str() },
                opt(l.quant_error)
            ));
        }
        let (before, after, cost) = self.totals();
        s.push_str(&format!(
            "total: {before} -> {after} block-linear parameters ({:.1}%), budget charged {cost:.0} of {} ; {:.1} s\n",
            100.0 * after as f64 / before.max(1) as f64,
            self.budget_params,
            self.seconds
        ));
        if let Some(summary) = self.compensation_summary() {
            s.push_str(&format!(
                "validation output distortion ({}): {summary}
",
                self.distortion_measure
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use factorvit::LinearKind;

    use super::super::LayerReport;
    use super::*;

    fn report(kinds: &[LinearKind]) -> Report {
        let layers = kinds
            .iter()
            .enumerate()
            .map(|(i, &kind)| LayerReport {
                kind,
                rank: usize::from(kind != LinearKind::Dense),
                ..LayerReport::new(&format!("blocks.{i}.mlp.fc1"), 8, 4)
            })
            .collect();
        Report {
            layers,
            budget_params: 64,
            calibration_images: 10,
            fit_images: 8,
            validation_images: 2,
            sensitivity_images: 0,
            validation_distortion_before_compensation: None,
            validation_distortion_after_compensation: None,
            compensation_kept: None,
            compensated_blocks: None,
            compensation_gate: Vec::new(),
            distortion_measure: String::new(),
            seconds: 0.0,
            timings: Vec::new(),
            options: String::new(),
        }
    }

    /// The JSON and the table spell a layer's kind as the file's `layers` table does.
    #[test]
    fn kinds_are_spelled_as_in_the_file() {
        let r = report(&[LinearKind::Dense, LinearKind::LowRank, LinearKind::LowRankSparse]);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let kinds: Vec<&str> = json["layers"].as_array().unwrap().iter().map(|l| l["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["dense", "low_rank", "low_rank_sparse"]);
        let table = r.table();
        for kind in ["dense", "low_rank", "low_rank_sparse"] {
            assert!(table.lines().any(|l| l.split_whitespace().nth(2) == Some(kind)), "{kind} in\n{table}");
        }
        assert_eq!(json["params_before"], 96);
    }
}
