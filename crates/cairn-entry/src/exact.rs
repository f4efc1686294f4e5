//! Exact deterministic steps: arithmetic over rationals and unit conversion by exact factors.
//! They run in the entry, not on a node, and are recorded like model steps: whoever holds the
//! run record computes them again and gets the same text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an exact step could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExactError {
    /// The text is not an expression this parser reads.
    #[error("not an arithmetic expression: {0}")]
    Syntax(String),
    /// Division by zero.
    #[error("division by zero")]
    DivisionByZero,
    /// A value left the exact range (numerator or denominator beyond 128 bits).
    #[error("the result is too large to compute exactly")]
    Overflow,
    /// A unit this converter does not know, or two units of different kinds.
    #[error("{0}")]
    Unit(String),
}

/// A rational number, kept reduced with a positive denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Ratio {
    /// `num / den`, reduced.
    pub fn new(num: i128, den: i128) -> Result<Self, ExactError> {
        if den == 0 {
            return Err(ExactError::DivisionByZero);
        }
        // i128::MIN has no positive counterpart: every value keeps |x| <= i128::MAX.
        if num == i128::MIN || den == i128::MIN {
            return Err(ExactError::Overflow);
        }
        let g = gcd(num, den).max(1);
        let (mut num, mut den) = (num / g, den / g);
        if den < 0 {
            num = num.checked_neg().ok_or(ExactError::Overflow)?;
            den = den.checked_neg().ok_or(ExactError::Overflow)?;
        }
        Ok(Self { num, den })
    }

    /// An integer.
    pub fn int(n: i128) -> Self {
        Self { num: n, den: 1 }
    }

    /// Parses a decimal literal (`12`, `0.125`, `3.`), exactly.
    pub fn parse_decimal(s: &str) -> Result<Self, ExactError> {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty() && frac.is_empty()
            || !(whole.chars().chain(frac.chars())).all(|c| c.is_ascii_digit())
        {
            return Err(ExactError::Syntax(format!("{s:?} is not a number")));
        }
        if whole.len() + frac.len() > 36 {
            return Err(ExactError::Overflow);
        }
        let digits = format!("{whole}{frac}");
        let num: i128 = digits.parse().map_err(|_| ExactError::Overflow)?;
        let den = 10i128
            .checked_pow(frac.len() as u32)
            .ok_or(ExactError::Overflow)?;
        Self::new(num, den)
    }

    fn add(self, o: Self) -> Result<Self, ExactError> {
        let num = self
            .num
            .checked_mul(o.den)
            .and_then(|a| o.num.checked_mul(self.den).and_then(|b| a.checked_add(b)))
            .ok_or(ExactError::Overflow)?;
        let den = self.den.checked_mul(o.den).ok_or(ExactError::Overflow)?;
        Self::new(num, den)
    }

    fn neg(self) -> Result<Self, ExactError> {
        Ok(Self {
            num: self.num.checked_neg().ok_or(ExactError::Overflow)?,
            den: self.den,
        })
    }

    fn sub(self, o: Self) -> Result<Self, ExactError> {
        self.add(o.neg()?)
    }

    fn mul(self, o: Self) -> Result<Self, ExactError> {
        // Cross-reduce first so exact products stay in range longer.
        let g1 = gcd(self.num, o.den).max(1);
        let g2 = gcd(o.num, self.den).max(1);
        let num = (self.num / g1)
            .checked_mul(o.num / g2)
            .ok_or(ExactError::Overflow)?;
        let den = (self.den / g2)
            .checked_mul(o.den / g1)
            .ok_or(ExactError::Overflow)?;
        Self::new(num, den)
    }

    fn div(self, o: Self) -> Result<Self, ExactError> {
        if o.num == 0 {
            return Err(ExactError::DivisionByZero);
        }
        self.mul(Self::new(o.den, o.num)?)
    }

    fn pow(self, e: Self) -> Result<Self, ExactError> {
        if e.den != 1 || e.num.abs() > 256 {
            return Err(ExactError::Syntax(
                "exponents must be whole numbers between -256 and 256".into(),
            ));
        }
        let mut out = Self::int(1);
        for _ in 0..e.num.abs() {
            out = out.mul(self)?;
        }
        if e.num < 0 {
            Self::int(1).div(out)
        } else {
            Ok(out)
        }
    }

    /// Whether it is a whole number.
    pub fn is_integer(&self) -> bool {
        self.den == 1
    }

    /// Whether its decimal expansion ends (the denominator has no prime factor but 2 and 5).
    fn terminates(&self) -> Option<u32> {
        let (mut d, mut twos, mut fives) = (self.den, 0u32, 0u32);
        while d % 2 == 0 {
            d /= 2;
            twos += 1;
        }
        while d % 5 == 0 {
            d /= 5;
            fives += 1;
        }
        (d == 1).then_some(twos.max(fives))
    }

    /// Decimal text with `places` digits after the point, rounded half away from zero (long
    /// division in 256 bits: ten times a 128-bit remainder does not fit in 128).
    fn decimal(&self, places: u32) -> String {
        use alloy_primitives::U256;
        let neg = self.num < 0;
        let n = U256::from(self.num.unsigned_abs());
        let d = U256::from(self.den.unsigned_abs());
        let whole = n / d;
        let mut rem = n % d;
        let ten = U256::from(10u8);
        let mut digits = String::new();
        for _ in 0..places {
            rem *= ten;
            digits.push(char::from(b'0' + (rem / d).to::<u8>()));
            rem %= d;
        }
        // Round on the next digit.
        let (mut whole, mut digits) = (whole, digits.into_bytes());
        if rem * U256::from(2u8) >= d {
            let mut i = digits.len();
            loop {
                if i == 0 {
                    whole += U256::from(1u8);
                    break;
                }
                i -= 1;
                if digits[i] == b'9' {
                    digits[i] = b'0';
                } else {
                    digits[i] += 1;
                    break;
                }
            }
        }
        let digits = String::from_utf8(digits).expect("ascii digits");
        let digits = digits.trim_end_matches('0');
        let sign = if neg && (!whole.is_zero() || !digits.is_empty()) {
            "-"
        } else {
            ""
        };
        if digits.is_empty() {
            format!("{sign}{whole}")
        } else {
            format!("{sign}{whole}.{digits}")
        }
    }
}

impl fmt::Display for Ratio {
    /// Exact decimal when it terminates (within 30 places), else `num/den ≈ decimal`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.terminates() {
            Some(p) if p <= 30 => f.write_str(&self.decimal(p)),
            _ => write!(f, "{}/{} ≈ {}", self.num, self.den, self.decimal(12)),
        }
    }
}

/// The longest expression read (characters).
pub const MAX_EXPRESSION: usize = 256;
const MAX_DEPTH: usize = 32;

/// Evaluates an arithmetic expression exactly: decimals, `+ - * / ^`, `×`, `÷`, parentheses,
/// unary minus, and `N%` (N/100).
pub fn evaluate(expr: &str) -> Result<Ratio, ExactError> {
    if expr.chars().count() > MAX_EXPRESSION {
        return Err(ExactError::Syntax(format!(
            "longer than {MAX_EXPRESSION} characters"
        )));
    }
    let tokens = tokenize(expr)?;
    let mut p = Parser {
        t: &tokens,
        i: 0,
        depth: 0,
    };
    let v = p.sum()?;
    if p.i != tokens.len() {
        return Err(ExactError::Syntax(format!("unexpected {:?}", tokens[p.i])));
    }
    Ok(v)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Ratio),
    Op(char),
    Open,
    Close,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, ExactError> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => i += 1,
            '0'..='9' | '.' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                out.push(Tok::Num(Ratio::parse_decimal(&text)?));
            }
            '+' | '-' | '*' | '/' | '^' | '%' => {
                out.push(Tok::Op(c));
                i += 1;
            }
            '×' | 'x' => {
                out.push(Tok::Op('*'));
                i += 1;
            }
            '÷' => {
                out.push(Tok::Op('/'));
                i += 1;
            }
            '−' => {
                out.push(Tok::Op('-'));
                i += 1;
            }
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            other => return Err(ExactError::Syntax(format!("unexpected {other:?}"))),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    t: &'a [Tok],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }

    fn sum(&mut self) -> Result<Ratio, ExactError> {
        let mut v = self.product()?;
        while let Some(Tok::Op(op @ ('+' | '-'))) = self.peek().cloned() {
            self.i += 1;
            let r = self.product()?;
            v = if op == '+' { v.add(r)? } else { v.sub(r)? };
        }
        Ok(v)
    }

    fn product(&mut self) -> Result<Ratio, ExactError> {
        let mut v = self.unary()?;
        while let Some(Tok::Op(op @ ('*' | '/'))) = self.peek().cloned() {
            self.i += 1;
            let r = self.unary()?;
            v = if op == '*' { v.mul(r)? } else { v.div(r)? };
        }
        Ok(v)
    }

    /// `-2^2` is `-(2^2)`; `2^-2` is `2^(-2)`.
    fn unary(&mut self) -> Result<Ratio, ExactError> {
        match self.peek() {
            Some(Tok::Op('-')) => {
                self.i += 1;
                self.nested(|p| p.unary())?.neg()
            }
            Some(Tok::Op('+')) => {
                self.i += 1;
                self.nested(|p| p.unary())
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Result<Ratio, ExactError> {
        let base = self.postfix()?;
        if let Some(Tok::Op('^')) = self.peek() {
            self.i += 1;
            let e = self.nested(|p| p.unary())?;
            return base.pow(e);
        }
        Ok(base)
    }

    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Ratio, ExactError>,
    ) -> Result<Ratio, ExactError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExactError::Syntax("nested too deeply".into()));
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn postfix(&mut self) -> Result<Ratio, ExactError> {
        let mut v = self.atom()?;
        while let Some(Tok::Op('%')) = self.peek() {
            self.i += 1;
            v = v.div(Ratio::int(100))?;
        }
        Ok(v)
    }

    fn atom(&mut self) -> Result<Ratio, ExactError> {
        match self.peek().cloned() {
            Some(Tok::Num(n)) => {
                self.i += 1;
                Ok(n)
            }
            Some(Tok::Open) => {
                self.i += 1;
                let v = self.nested(|p| p.sum())?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(ExactError::Syntax("a parenthesis is not closed".into()));
                }
                self.i += 1;
                Ok(v)
            }
            Some(t) => Err(ExactError::Syntax(format!("unexpected {t:?}"))),
            None => Err(ExactError::Syntax("the expression ends early".into())),
        }
    }
}

/// What a unit measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dimension {
    Length,
    Mass,
    Time,
    Data,
    Volume,
    Speed,
    Energy,
    Temperature,
}

/// A unit: its canonical symbol, dimension, and factor to the dimension's base unit as a
/// decimal string (exact), or a temperature scale.
struct Unit {
    symbol: &'static str,
    names: &'static [&'static str],
    dim: Dimension,
    factor: &'static str,
}

/// Every unit the converter knows, with exact factors (international yard and pound, US gallon).
const UNITS: &[Unit] = &[
    Unit {
        symbol: "mm",
        names: &[
            "mm",
            "millimeter",
            "millimeters",
            "millimetre",
            "millimetres",
        ],
        dim: Dimension::Length,
        factor: "0.001",
    },
    Unit {
        symbol: "cm",
        names: &[
            "cm",
            "centimeter",
            "centimeters",
            "centimetre",
            "centimetres",
        ],
        dim: Dimension::Length,
        factor: "0.01",
    },
    Unit {
        symbol: "m",
        names: &["m", "meter", "meters", "metre", "metres"],
        dim: Dimension::Length,
        factor: "1",
    },
    Unit {
        symbol: "km",
        names: &["km", "kilometer", "kilometers", "kilometre", "kilometres"],
        dim: Dimension::Length,
        factor: "1000",
    },
    Unit {
        symbol: "in",
        names: &["in", "inch", "inches"],
        dim: Dimension::Length,
        factor: "0.0254",
    },
    Unit {
        symbol: "ft",
        names: &["ft", "foot", "feet"],
        dim: Dimension::Length,
        factor: "0.3048",
    },
    Unit {
        symbol: "yd",
        names: &["yd", "yard", "yards"],
        dim: Dimension::Length,
        factor: "0.9144",
    },
    Unit {
        symbol: "mi",
        names: &["mi", "mile", "miles"],
        dim: Dimension::Length,
        factor: "1609.344",
    },
    Unit {
        symbol: "mg",
        names: &["mg", "milligram", "milligrams"],
        dim: Dimension::Mass,
        factor: "0.000001",
    },
    Unit {
        symbol: "g",
        names: &["g", "gram", "grams"],
        dim: Dimension::Mass,
        factor: "0.001",
    },
    Unit {
        symbol: "kg",
        names: &["kg", "kilogram", "kilograms", "kilo", "kilos"],
        dim: Dimension::Mass,
        factor: "1",
    },
    Unit {
        symbol: "t",
        names: &["t", "tonne", "tonnes"],
        dim: Dimension::Mass,
        factor: "1000",
    },
    Unit {
        symbol: "oz",
        names: &["oz", "ounce", "ounces"],
        dim: Dimension::Mass,
        factor: "0.028349523125",
    },
    Unit {
        symbol: "lb",
        names: &["lb", "lbs", "pound", "pounds"],
        dim: Dimension::Mass,
        factor: "0.45359237",
    },
    Unit {
        symbol: "ms",
        names: &["ms", "millisecond", "milliseconds"],
        dim: Dimension::Time,
        factor: "0.001",
    },
    Unit {
        symbol: "s",
        names: &["s", "sec", "secs", "second", "seconds"],
        dim: Dimension::Time,
        factor: "1",
    },
    Unit {
        symbol: "min",
        names: &["min", "mins", "minute", "minutes"],
        dim: Dimension::Time,
        factor: "60",
    },
    Unit {
        symbol: "h",
        names: &["h", "hr", "hrs", "hour", "hours"],
        dim: Dimension::Time,
        factor: "3600",
    },
    Unit {
        symbol: "day",
        names: &["day", "days"],
        dim: Dimension::Time,
        factor: "86400",
    },
    Unit {
        symbol: "week",
        names: &["week", "weeks"],
        dim: Dimension::Time,
        factor: "604800",
    },
    Unit {
        symbol: "B",
        names: &["b", "byte", "bytes"],
        dim: Dimension::Data,
        factor: "1",
    },
    Unit {
        symbol: "KB",
        names: &["kb", "kilobyte", "kilobytes"],
        dim: Dimension::Data,
        factor: "1000",
    },
    Unit {
        symbol: "MB",
        names: &["mb", "megabyte", "megabytes"],
        dim: Dimension::Data,
        factor: "1000000",
    },
    Unit {
        symbol: "GB",
        names: &["gb", "gigabyte", "gigabytes"],
        dim: Dimension::Data,
        factor: "1000000000",
    },
    Unit {
        symbol: "TB",
        names: &["tb", "terabyte", "terabytes"],
        dim: Dimension::Data,
        factor: "1000000000000",
    },
    Unit {
        symbol: "KiB",
        names: &["kib", "kibibyte", "kibibytes"],
        dim: Dimension::Data,
        factor: "1024",
    },
    Unit {
        symbol: "MiB",
        names: &["mib", "mebibyte", "mebibytes"],
        dim: Dimension::Data,
        factor: "1048576",
    },
    Unit {
        symbol: "GiB",
        names: &["gib", "gibibyte", "gibibytes"],
        dim: Dimension::Data,
        factor: "1073741824",
    },
    Unit {
        symbol: "TiB",
        names: &["tib", "tebibyte", "tebibytes"],
        dim: Dimension::Data,
        factor: "1099511627776",
    },
    Unit {
        symbol: "ml",
        names: &[
            "ml",
            "milliliter",
            "milliliters",
            "millilitre",
            "millilitres",
        ],
        dim: Dimension::Volume,
        factor: "0.001",
    },
    Unit {
        symbol: "l",
        names: &["l", "liter", "liters", "litre", "litres"],
        dim: Dimension::Volume,
        factor: "1",
    },
    Unit {
        symbol: "gal",
        names: &["gal", "gallon", "gallons"],
        dim: Dimension::Volume,
        factor: "3.785411784",
    },
    Unit {
        symbol: "m/s",
        names: &["m/s"],
        dim: Dimension::Speed,
        factor: "1",
    },
    Unit {
        symbol: "km/h",
        names: &["km/h", "kph", "kmh"],
        dim: Dimension::Speed,
        factor: "0.27777777777777777777777777777777777",
    },
    Unit {
        symbol: "mph",
        names: &["mph"],
        dim: Dimension::Speed,
        factor: "0.44704",
    },
    Unit {
        symbol: "J",
        names: &["j", "joule", "joules"],
        dim: Dimension::Energy,
        factor: "1",
    },
    Unit {
        symbol: "kJ",
        names: &["kj", "kilojoule", "kilojoules"],
        dim: Dimension::Energy,
        factor: "1000",
    },
    Unit {
        symbol: "Wh",
        names: &["wh"],
        dim: Dimension::Energy,
        factor: "3600",
    },
    Unit {
        symbol: "kWh",
        names: &["kwh"],
        dim: Dimension::Energy,
        factor: "3600000",
    },
    Unit {
        symbol: "kcal",
        names: &["kcal", "calorie", "calories"],
        dim: Dimension::Energy,
        factor: "4184",
    },
    Unit {
        symbol: "°C",
        names: &["°c", "c", "celsius", "degc"],
        dim: Dimension::Temperature,
        factor: "C",
    },
    Unit {
        symbol: "°F",
        names: &["°f", "f", "fahrenheit", "degf"],
        dim: Dimension::Temperature,
        factor: "F",
    },
    Unit {
        symbol: "K",
        names: &["k", "kelvin", "kelvins"],
        dim: Dimension::Temperature,
        factor: "K",
    },
];

fn unit(name: &str) -> Option<&'static Unit> {
    let lower = name.trim().to_lowercase();
    let lower = lower.strip_prefix("degrees ").unwrap_or(&lower);
    UNITS.iter().find(|u| u.names.contains(&lower))
}

/// Whether `name` is a unit the converter knows.
pub fn is_unit(name: &str) -> bool {
    unit(name).is_some()
}

/// The canonical symbol of a known unit.
pub fn unit_symbol(name: &str) -> Option<&'static str> {
    unit(name).map(|u| u.symbol)
}

/// km/h's factor is 1000/3600: kept exact as a ratio rather than its decimal above.
fn factor(u: &Unit) -> Result<Ratio, ExactError> {
    if u.symbol == "km/h" {
        return Ratio::new(5, 18);
    }
    Ratio::parse_decimal(u.factor)
}

fn to_kelvin(v: Ratio, scale: &str) -> Result<Ratio, ExactError> {
    match scale {
        "C" => v.add(Ratio::new(27315, 100)?),
        "F" => v
            .sub(Ratio::int(32))?
            .mul(Ratio::new(5, 9)?)?
            .add(Ratio::new(27315, 100)?),
        _ => Ok(v),
    }
}

fn from_kelvin(k: Ratio, scale: &str) -> Result<Ratio, ExactError> {
    match scale {
        "C" => k.sub(Ratio::new(27315, 100)?),
        "F" => k
            .sub(Ratio::new(27315, 100)?)?
            .mul(Ratio::new(9, 5)?)?
            .add(Ratio::int(32)),
        _ => Ok(k),
    }
}

/// Converts `value` (a decimal literal) from one unit to another, exactly.
pub fn convert(value: &str, from: &str, to: &str) -> Result<Ratio, ExactError> {
    let v = Ratio::parse_decimal(value.trim_start_matches('-'))?;
    let v = if value.starts_with('-') { v.neg()? } else { v };
    let f = unit(from).ok_or_else(|| ExactError::Unit(format!("unknown unit {from:?}")))?;
    let t = unit(to).ok_or_else(|| ExactError::Unit(format!("unknown unit {to:?}")))?;
    if f.dim != t.dim {
        return Err(ExactError::Unit(format!(
            "{} and {} measure different things",
            f.symbol, t.symbol
        )));
    }
    if f.dim == Dimension::Temperature {
        return from_kelvin(to_kelvin(v, f.factor)?, t.factor);
    }
    v.mul(factor(f)?)?.div(factor(t)?)
}

/// An exact step's inputs, as the task object and run record hold them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExactInputs {
    /// `expression`, evaluated exactly.
    Arithmetic {
        /// The expression, with words already turned into operators.
        expression: String,
    },
    /// `value` `from` → `to`.
    Convert {
        /// A decimal literal.
        value: String,
        /// Canonical symbol.
        from: String,
        /// Canonical symbol.
        to: String,
    },
}

impl ExactInputs {
    /// Computes the step: its result as text.
    pub fn run(&self) -> Result<String, ExactError> {
        match self {
            Self::Arithmetic { expression } => Ok(evaluate(expression)?.to_string()),
            Self::Convert { value, from, to } => Ok(format!("{} {to}", convert(value, from, to)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_exact() {
        assert_eq!(evaluate("0.1 + 0.2").unwrap().to_string(), "0.3");
        assert_eq!(evaluate("(3 + 4) * 2.5").unwrap().to_string(), "17.5");
        assert_eq!(evaluate("2^10 - 1").unwrap().to_string(), "1023");
        assert_eq!(evaluate("-2^2").unwrap().to_string(), "-4");
        assert_eq!(evaluate("15% * 80").unwrap().to_string(), "12");
        assert_eq!(
            evaluate("1 / 3").unwrap().to_string(),
            "1/3 ≈ 0.333333333333"
        );
        assert_eq!(evaluate("2/3").unwrap().to_string(), "2/3 ≈ 0.666666666667");
        assert_eq!(evaluate("12 × 3 ÷ 4").unwrap().to_string(), "9");
        assert_eq!(evaluate("2^-2").unwrap().to_string(), "0.25");
    }

    #[test]
    fn hostile_expressions_fail_cleanly() {
        assert_eq!(evaluate("1 / 0"), Err(ExactError::DivisionByZero));
        assert_eq!(evaluate("10^256 * 10^256"), Err(ExactError::Overflow));
        assert!(matches!(evaluate("2^0.5"), Err(ExactError::Syntax(_))));
        assert!(matches!(evaluate("(1 + 2"), Err(ExactError::Syntax(_))));
        assert!(matches!(
            evaluate(&"(".repeat(100)),
            Err(ExactError::Syntax(_))
        ));
        assert!(matches!(
            evaluate(&"-".repeat(100)),
            Err(ExactError::Syntax(_))
        ));
        assert!(matches!(
            evaluate(&"1+".repeat(200)),
            Err(ExactError::Syntax(_))
        ));
        assert!(matches!(evaluate("rm -rf /"), Err(ExactError::Syntax(_))));
        // A denominator near 2^127: its decimal digits still come out right.
        let r = evaluate("(3^80 - 1) / 3^80").unwrap().to_string();
        assert!(r.ends_with("≈ 1"), "{r}");
        assert_eq!(evaluate("(-2)^127"), Err(ExactError::Overflow));
        assert_eq!(evaluate("-(2^126) * 2"), Err(ExactError::Overflow));
    }

    #[test]
    fn conversions_use_exact_factors() {
        let km = convert("5", "km", "mi").unwrap().to_string();
        assert!(km.ends_with("≈ 3.106855961187"), "{km}");
        assert_eq!(convert("1", "mi", "m").unwrap().to_string(), "1609.344");
        assert_eq!(convert("100", "°C", "°F").unwrap().to_string(), "212");
        assert_eq!(convert("-40", "F", "C").unwrap().to_string(), "-40");
        assert_eq!(convert("0", "K", "celsius").unwrap().to_string(), "-273.15");
        assert_eq!(
            convert("1", "GiB", "MB").unwrap().to_string(),
            "1073.741824"
        );
        assert_eq!(convert("36", "km/h", "m/s").unwrap().to_string(), "10");
        assert_eq!(convert("1", "lb", "g").unwrap().to_string(), "453.59237");
        assert!(matches!(convert("1", "kg", "m"), Err(ExactError::Unit(_))));
        assert!(matches!(
            convert("1", "parsec", "m"),
            Err(ExactError::Unit(_))
        ));
    }
}
