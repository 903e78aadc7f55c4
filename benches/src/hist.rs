//! What the fan-out benchmarks share: the wall clock their latencies are measured on, and a
//! latency histogram in µs with buckets growing by 2%.

/// Microseconds since the Unix epoch: publishers and subscribers share this machine's clock.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Hist {
    buckets: Vec<u64>,
}

const BUCKETS: usize = 1200;

impl Hist {
    pub fn new() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
        }
    }
    fn bucket(us: u64) -> usize {
        (((us.max(1) as f64).ln() / 1.02f64.ln()) as usize).min(BUCKETS - 1)
    }
    pub fn record(&mut self, us: u64) {
        self.buckets[Self::bucket(us)] += 1;
    }
    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
    }
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
    /// The upper bound of the bucket holding quantile `q`, in ms.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        let want = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                return 1.02f64.powi(i as i32 + 1) / 1000.0;
            }
        }
        f64::NAN
    }
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}
