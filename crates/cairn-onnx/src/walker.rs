//! The one forward pass over the protobuf wire format: fields skipped or bounded, the graph's inputs and outputs kept.

use super::*;

pub(super) struct Walker<R> {
    pub(super) r: BufReader<R>,
    pub(super) pos: u64,
    pub(super) limits: Limits,
}

impl<R: Read> Walker<R> {
    pub(super) fn malformed<T>(&self, what: impl Into<String>) -> Result<T, OnnxError> {
        Err(OnnxError::Malformed {
            offset: self.pos,
            what: what.into(),
        })
    }

    pub(super) fn byte(&mut self) -> Result<u8, OnnxError> {
        let mut b = [0u8];
        match self.r.read_exact(&mut b) {
            Ok(()) => {
                self.pos += 1;
                Ok(b[0])
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(OnnxError::Truncated(self.pos))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn varint(&mut self) -> Result<u64, OnnxError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return self.malformed("varint overflows 64 bits");
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        self.malformed("varint longer than 10 bytes")
    }

    /// The next field's number and wire type, or `None` at `end` (or at end of stream when
    /// `end` is `None`).
    pub(super) fn next_field(&mut self, end: Option<u64>) -> Result<Option<(u64, u8)>, OnnxError> {
        match end {
            Some(end) if self.pos == end => return Ok(None),
            Some(end) if self.pos > end => return self.malformed("field overruns its message"),
            Some(_) => {}
            None => {
                if self.r.fill_buf()?.is_empty() {
                    return Ok(None);
                }
            }
        }
        let key = self.varint()?;
        let (field, wire) = (key >> 3, (key & 7) as u8);
        if field == 0 {
            return self.malformed("field number 0");
        }
        Ok(Some((field, wire)))
    }

    /// Reads a length prefix and returns where the field ends, checked against the parent.
    pub(super) fn len_end(&mut self, parent_end: Option<u64>) -> Result<u64, OnnxError> {
        let len = self.varint()?;
        let end = self.pos.checked_add(len);
        match (end, parent_end) {
            (Some(e), Some(p)) if e <= p => Ok(e),
            (Some(e), None) => Ok(e),
            _ => self.malformed(format!("length {len} overruns its message")),
        }
    }

    pub(super) fn skip_bytes(&mut self, n: u64) -> Result<(), OnnxError> {
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        self.pos += copied;
        if copied < n {
            return Err(OnnxError::Truncated(self.pos));
        }
        Ok(())
    }

    pub(super) fn skip(&mut self, wire: u8, parent_end: Option<u64>) -> Result<(), OnnxError> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.skip_bytes(8),
            I32 => self.skip_bytes(4),
            LEN => {
                let end = self.len_end(parent_end)?;
                self.skip_bytes(end - self.pos)
            }
            other => self.malformed(format!("unsupported protobuf wire type {other}")),
        }
    }

    pub(super) fn expect(&self, field: u64, wire: u8, want: u8) -> Result<(), OnnxError> {
        if wire == want {
            Ok(())
        } else {
            self.malformed(format!(
                "field {field} has wire type {wire}, expected {want}"
            ))
        }
    }

    /// Reads a length-delimited field into memory, refusing more than `cap` bytes.
    pub(super) fn bytes(
        &mut self,
        parent_end: Option<u64>,
        cap: u64,
        what: &str,
    ) -> Result<Vec<u8>, OnnxError> {
        let end = self.len_end(parent_end)?;
        let len = end - self.pos;
        if len > cap {
            return Err(OnnxError::Limit(format!(
                "{what} is {len} bytes, more than the {cap} allowed"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        match self.r.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(OnnxError::Truncated(self.pos));
            }
            Err(e) => return Err(e.into()),
        }
        self.pos = end;
        Ok(buf)
    }

    pub(super) fn string(
        &mut self,
        parent_end: Option<u64>,
        what: &str,
    ) -> Result<String, OnnxError> {
        let bytes = self.bytes(parent_end, self.limits.max_string_bytes, what)?;
        String::from_utf8(bytes).or_else(|_| self.malformed(format!("{what} is not UTF-8")))
    }

    pub(super) fn decode<M: Message + Default>(
        &mut self,
        end: Option<u64>,
        what: &str,
    ) -> Result<M, OnnxError> {
        let offset = self.pos;
        let bytes = self.bytes(end, self.limits.max_message_bytes, what)?;
        M::decode(bytes.as_slice()).map_err(|e| OnnxError::Malformed {
            offset,
            what: format!("{what}: {e}"),
        })
    }

    /// Walks a `GraphProto` that is not the main graph's signature (a subgraph, a training
    /// graph): only to refuse external data in it.
    pub(super) fn scan_graph(&mut self, end: u64, depth: u32) -> Result<(), OnnxError> {
        let depth = self.deeper(depth)?;
        while let Some((field, wire)) = self.next_field(Some(end))? {
            match (field, wire) {
                (1, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.scan_node(e, depth)?;
                }
                (5, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.tensor_name(e)?;
                }
                (15, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.scan_sparse(e)?;
                }
                _ => self.skip(wire, Some(end))?,
            }
        }
        Ok(())
    }

    /// A `NodeProto` (field 5: attributes) or a `FunctionProto` (field 7: nodes).
    pub(super) fn scan_node(&mut self, end: u64, depth: u32) -> Result<(), OnnxError> {
        let depth = self.deeper(depth)?;
        while let Some((field, wire)) = self.next_field(Some(end))? {
            if field == 5 && wire == LEN {
                let e = self.len_end(Some(end))?;
                self.scan_attribute(e, depth)?;
            } else {
                self.skip(wire, Some(end))?;
            }
        }
        Ok(())
    }

    pub(super) fn scan_function(&mut self, end: u64, depth: u32) -> Result<(), OnnxError> {
        let depth = self.deeper(depth)?;
        while let Some((field, wire)) = self.next_field(Some(end))? {
            if field == 7 && wire == LEN {
                let e = self.len_end(Some(end))?;
                self.scan_node(e, depth)?;
            } else {
                self.skip(wire, Some(end))?;
            }
        }
        Ok(())
    }

    /// An `AttributeProto`: tensors (5, 10), graphs (6, 11), sparse tensors (22, 23).
    pub(super) fn scan_attribute(&mut self, end: u64, depth: u32) -> Result<(), OnnxError> {
        let depth = self.deeper(depth)?;
        while let Some((field, wire)) = self.next_field(Some(end))? {
            match (field, wire) {
                (5 | 10, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.tensor_name(e)?;
                }
                (6 | 11, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.scan_graph(e, depth)?;
                }
                (22 | 23, LEN) => {
                    let e = self.len_end(Some(end))?;
                    self.scan_sparse(e)?;
                }
                _ => self.skip(wire, Some(end))?,
            }
        }
        Ok(())
    }

    /// A `SparseTensorProto`: values (1) and indices (2) are tensors.
    pub(super) fn scan_sparse(&mut self, end: u64) -> Result<(), OnnxError> {
        while let Some((field, wire)) = self.next_field(Some(end))? {
            if (field == 1 || field == 2) && wire == LEN {
                let e = self.len_end(Some(end))?;
                self.tensor_name(e)?;
            } else {
                self.skip(wire, Some(end))?;
            }
        }
        Ok(())
    }

    /// A `TrainingInfoProto`: its initialization (1) and algorithm (2) graphs.
    pub(super) fn scan_training(&mut self, end: u64, depth: u32) -> Result<(), OnnxError> {
        while let Some((field, wire)) = self.next_field(Some(end))? {
            if (field == 1 || field == 2) && wire == LEN {
                let e = self.len_end(Some(end))?;
                self.scan_graph(e, depth)?;
            } else {
                self.skip(wire, Some(end))?;
            }
        }
        Ok(())
    }

    pub(super) fn deeper(&self, depth: u32) -> Result<u32, OnnxError> {
        if depth >= 64 {
            return Err(OnnxError::Limit(
                "subgraphs nested more than 64 deep".into(),
            ));
        }
        Ok(depth + 1)
    }

    pub(super) fn model(&mut self) -> Result<OnnxSignature, OnnxError> {
        let mut ir_version = None;
        let mut producer_name = String::new();
        let mut producer_version = String::new();
        let mut opsets = Vec::new();
        let mut graph = None;
        while let Some((field, wire)) = self.next_field(None)? {
            match field {
                1 => {
                    self.expect(field, wire, VARINT)?;
                    ir_version = Some(self.varint()? as i64);
                }
                2 => {
                    self.expect(field, wire, LEN)?;
                    producer_name = self.string(None, "producer_name")?;
                }
                3 => {
                    self.expect(field, wire, LEN)?;
                    producer_version = self.string(None, "producer_version")?;
                }
                7 => {
                    self.expect(field, wire, LEN)?;
                    if graph.is_some() {
                        return self.malformed("the model has two graphs");
                    }
                    let end = self.len_end(None)?;
                    graph = Some(self.graph(end)?);
                }
                20 => {
                    self.expect(field, wire, LEN)?;
                    let end = self.len_end(None)?;
                    self.scan_training(end, 0)?;
                }
                25 => {
                    self.expect(field, wire, LEN)?;
                    let end = self.len_end(None)?;
                    self.scan_function(end, 0)?;
                }
                8 => {
                    self.expect(field, wire, LEN)?;
                    let op: proto::OperatorSetIdProto = self.decode(None, "opset_import")?;
                    opsets.push(Opset {
                        domain: op.domain,
                        version: op.version,
                    });
                    self.check_count(opsets.len(), "opset imports")?;
                }
                _ => self.skip(wire, None)?,
            }
        }
        let ir_version = ir_version.ok_or(OnnxError::Incomplete("no ir_version"))?;
        let (inputs, outputs, initializers) = graph.ok_or(OnnxError::Incomplete("no graph"))?;
        if opsets.is_empty() {
            return Err(OnnxError::Incomplete("no opset_import"));
        }
        if outputs.is_empty() {
            return Err(OnnxError::Incomplete("the graph has no outputs"));
        }
        let inputs = inputs
            .into_iter()
            .filter(|v: &ValueInfo| !initializers.contains(&v.name))
            .collect();
        Ok(OnnxSignature {
            ir_version,
            producer_name,
            producer_version,
            opsets,
            inputs,
            outputs,
        })
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn graph(
        &mut self,
        end: u64,
    ) -> Result<(Vec<ValueInfo>, Vec<ValueInfo>, HashSet<String>), OnnxError> {
        let (mut inputs, mut outputs, mut initializers) = (Vec::new(), Vec::new(), HashSet::new());
        while let Some((field, wire)) = self.next_field(Some(end))? {
            match field {
                1 if wire == LEN => {
                    let node_end = self.len_end(Some(end))?;
                    self.scan_node(node_end, 0)?;
                }
                15 if wire == LEN => {
                    let sparse_end = self.len_end(Some(end))?;
                    self.scan_sparse(sparse_end)?;
                }
                5 => {
                    self.expect(field, wire, LEN)?;
                    let tensor_end = self.len_end(Some(end))?;
                    if let Some(name) = self.tensor_name(tensor_end)? {
                        initializers.insert(name);
                        if initializers.len() > self.limits.max_initializers {
                            return Err(OnnxError::Limit(format!(
                                "more than {} initializers",
                                self.limits.max_initializers
                            )));
                        }
                    }
                }
                11 | 12 => {
                    self.expect(field, wire, LEN)?;
                    let what = if field == 11 {
                        "graph input"
                    } else {
                        "graph output"
                    };
                    let info: proto::ValueInfoProto = self.decode(Some(end), what)?;
                    let value = self.value_info(info, what)?;
                    let list = if field == 11 {
                        &mut inputs
                    } else {
                        &mut outputs
                    };
                    list.push(value);
                    self.check_count(list.len(), "graph inputs or outputs")?;
                }
                _ => self.skip(wire, Some(end))?,
            }
        }
        Ok((inputs, outputs, initializers))
    }

    /// Streams through a `TensorProto`, keeping only its name (field 8), and refuses one whose
    /// data lives in an external file (`data_location` 14 = EXTERNAL, or `external_data` 13).
    pub(super) fn tensor_name(&mut self, end: u64) -> Result<Option<String>, OnnxError> {
        let mut name = None;
        let mut external = false;
        while let Some((field, wire)) = self.next_field(Some(end))? {
            match (field, wire) {
                (8, LEN) => name = Some(self.string(Some(end), "tensor name")?),
                (14, VARINT) => external |= self.varint()? != 0,
                (13, LEN) => {
                    external = true;
                    self.skip(wire, Some(end))?;
                }
                _ => self.skip(wire, Some(end))?,
            }
        }
        if external {
            return Err(OnnxError::ExternalData(
                name.unwrap_or_else(|| "(unnamed)".into()),
            ));
        }
        Ok(name)
    }

    pub(super) fn check_count(&self, n: usize, what: &str) -> Result<(), OnnxError> {
        if n > self.limits.max_entries {
            Err(OnnxError::Limit(format!(
                "more than {} {what}",
                self.limits.max_entries
            )))
        } else {
            Ok(())
        }
    }

    pub(super) fn value_info(
        &self,
        info: proto::ValueInfoProto,
        what: &str,
    ) -> Result<ValueInfo, OnnxError> {
        if info.name.is_empty() {
            return self.malformed(format!("a {what} has no name"));
        }
        let ty = info.r#type.unwrap_or_default();
        let (elem_type, shape) = match &ty.value {
            Some(proto::TypeValue::Tensor(t)) | Some(proto::TypeValue::SparseTensor(t)) => {
                let shape = match &t.shape {
                    Some(s) if s.dim.len() > self.limits.max_rank => {
                        return Err(OnnxError::Limit(format!(
                            "{what} `{}` has rank {}, more than {}",
                            info.name,
                            s.dim.len(),
                            self.limits.max_rank
                        )));
                    }
                    Some(s) => Some(s.dim.iter().map(dim).collect()),
                    None => None,
                };
                (Some(elem_name(t.elem_type)), shape)
            }
            _ => (None, None),
        };
        Ok(ValueInfo {
            name: info.name,
            type_name: type_name(&ty),
            elem_type,
            shape,
        })
    }
}
