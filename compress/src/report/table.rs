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
            "{:<22} {:>10} {:<15} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>4}\n",
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
            "kept"
        );
        for l in &self.layers {
            let comp_fit = match (l.compensation_fit_before, l.compensation_fit_after) {
                (Some(_), Some(a)) => opt(Some(a)),
                _ => "-".into(),
            };
            s.push_str(&format!(
                "{:<22} {:>10} {:<15} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>4}\n",
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
                }
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
