//! Temporary stand-in for the layer-plan module (replaced by the real parser).

/// How a parallel group merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// `x + Σ(Lᵢ(x) − x)`.
    SumUpdates,
    /// `mean(Lᵢ(x))`.
    Mean,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanStep {
    /// One layer.
    Layer(usize),
    /// A layer several times.
    Repeat {
        /// The layer.
        layer: usize,
        /// How many times.
        times: usize,
    },
    /// Layers in parallel from the same input.
    Parallel {
        /// The layers.
        layers: Vec<usize>,
        /// The merge.
        merge: Merge,
    },
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    steps: Vec<PlanStep>,
}

impl Plan {
    /// The steps.
    pub fn steps(&self) -> &[PlanStep] {
        &self.steps
    }
    /// The identity plan.
    pub fn identity(n: usize) -> Plan {
        Plan {
            steps: (0..n).map(PlanStep::Layer).collect(),
        }
    }
    /// Parses.
    pub fn parse(_t: &str, n: usize) -> Result<Plan, String> {
        Ok(Plan::identity(n))
    }
    /// Block applications.
    pub fn layer_applications(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match s {
                PlanStep::Layer(_) => 1,
                PlanStep::Repeat { times, .. } => *times,
                PlanStep::Parallel { layers, .. } => layers.len(),
            })
            .sum()
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.steps)
    }
}
