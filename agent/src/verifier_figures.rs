//! How close each eBPF program sits to the verifier's limits: the combined stack depth of
//! its deepest bpf-to-bpf call chain and the instructions the verifier processed.
//!
//! Why a margin: the programs once sat a few bytes under the 512-byte stack limit and a
//! Debian point release of LLVM pushed one over ("combined stack size of 3 calls is 592.
//! Too large"); only a fresh machine showed it. `nephilia-agent check` and `cargo xtask
//! test` print these figures and fail when a program leaves less than the margin below.
//!
//! - Instructions come from the kernel (`bpf_prog_info.verified_insns`, Linux 5.16+).
//! - The kernel does not report a loaded program's stack depth, so it is computed here from
//!   the object the agent loads, the way the verifier's `check_max_stack_depth` does it:
//!   each function's depth is the deepest `r10`-relative byte it touches or hands out as a
//!   pointer, rounded up to 16 bytes (the JIT's granularity); a program's figure is the
//!   largest sum of those depths along any chain of bpf-to-bpf calls from its entry. The
//!   static figure is never below the verifier's (it also counts paths the verifier prunes).
//!   <https://github.com/torvalds/linux/blob/master/kernel/bpf/verifier.c> (`check_max_stack_depth_subprog`)

use std::collections::HashMap;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionIndex};

/// The verifier's hard stack limit (`MAX_BPF_STACK`).
pub const STACK_LIMIT_BYTES: u32 = 512;
/// The most stack a program may use and still pass: a quarter of the limit stays free for
/// the next compiler's spills.
pub const STACK_MARGIN_BYTES: u32 = 384;
/// The verifier's complexity limit for privileged programs (`BPF_COMPLEXITY_LIMIT_INSNS`).
pub const INSTRUCTION_LIMIT: u32 = 1_000_000;
/// The most processed instructions a program may need and still pass: half the limit.
pub const INSTRUCTION_MARGIN: u32 = INSTRUCTION_LIMIT / 2;

/// One program's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramFigures {
    pub program: String,
    /// Combined stack of the deepest call chain, in bytes.
    pub stack_bytes: u32,
    /// Instructions the verifier processed; `None` on kernels before 5.16.
    pub instructions: Option<u32>,
}

impl ProgramFigures {
    /// What exceeds the margin, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.stack_bytes > STACK_MARGIN_BYTES {
            problems.push(format!(
                "stack {} bytes exceeds the {STACK_MARGIN_BYTES}-byte margin (verifier limit {STACK_LIMIT_BYTES})",
                self.stack_bytes
            ));
        }
        if let Some(instructions) = self.instructions
            && instructions > INSTRUCTION_MARGIN
        {
            problems.push(format!(
                "{instructions} instructions processed exceed the margin of {INSTRUCTION_MARGIN} (verifier limit {INSTRUCTION_LIMIT})"
            ));
        }
        problems
    }

    /// `stack 288/384 B, 1 234/500 000 insns` as `check` prints it.
    pub fn summary(&self) -> String {
        let instructions = self
            .instructions
            .map_or_else(|| "n/a".to_string(), |count| count.to_string());
        format!(
            "stack {} B (margin {STACK_MARGIN_BYTES}, limit {STACK_LIMIT_BYTES}), {instructions} insns processed (margin {INSTRUCTION_MARGIN})",
            self.stack_bytes
        )
    }
}

/// Why the object could not be analysed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object is not a readable ELF file.
    #[error("cannot parse the eBPF object: {0}")]
    Parse(#[from] object::Error),
    /// A call's target is not a function of the object.
    #[error("a bpf-to-bpf call in {function} targets no known function")]
    UnknownCallTarget { function: String },
    /// The call graph has a cycle; the verifier rejects recursion.
    #[error("{function} calls itself (directly or not); the verifier rejects recursion")]
    Recursion { function: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const INSTRUCTION_BYTES: u64 = 8;
/// `BPF_JMP | BPF_CALL`.
const OP_CALL: u8 = 0x85;
/// `BPF_LD | BPF_IMM | BPF_DW`: the only instruction that takes two slots.
const OP_LOAD_IMM64: u8 = 0x18;
/// `src_reg` of a call to another BPF function (rather than a helper).
const PSEUDO_CALL: u8 = 1;
const FRAME_POINTER: u8 = 10;

/// A function of the object: where its code lies and what it uses.
struct Function {
    name: String,
    /// Programs have a section of their own (`tp_btf/…`, `classifier`); `.text` holds
    /// the functions they call.
    is_program: bool,
    section: SectionIndex,
    start: u64,
    /// Own stack depth, bytes, not rounded.
    depth: u32,
    /// Callees as (section, offset of their first instruction).
    calls: Vec<(SectionIndex, u64)>,
}

/// Combined stack depth of every program in the object, by name.
pub fn stack_depths(elf: &[u8]) -> Result<HashMap<String, u32>> {
    let file = object::File::parse(elf)?;
    let mut functions = Vec::new();
    for symbol in file.symbols() {
        if symbol.kind() != object::SymbolKind::Text || symbol.size() == 0 {
            continue;
        }
        let Some(section_index) = symbol.section_index() else {
            continue;
        };
        let section = file.section_by_index(section_index)?;
        let data = section.data()?;
        let (start, end) = (symbol.address(), symbol.address() + symbol.size());
        let Some(code) = data.get(start as usize..end as usize) else {
            continue;
        };
        let relocations: HashMap<u64, RelocationTarget> = section
            .relocations()
            .map(|(offset, relocation)| (offset, relocation.target()))
            .collect();
        let name = symbol.name()?.to_string();
        let mut calls = Vec::new();
        for (index, instruction) in code.chunks_exact(INSTRUCTION_BYTES as usize).enumerate() {
            if instruction[0] != OP_CALL || instruction[1] >> 4 != PSEUDO_CALL {
                continue;
            }
            let offset = start + index as u64 * INSTRUCTION_BYTES;
            let imm = i32::from_le_bytes([
                instruction[4],
                instruction[5],
                instruction[6],
                instruction[7],
            ]);
            let relative = |base: u64| {
                base.checked_add_signed((i64::from(imm) + 1) * INSTRUCTION_BYTES as i64)
                    .ok_or_else(|| Error::UnknownCallTarget {
                        function: name.clone(),
                    })
            };
            let target = match relocations.get(&offset) {
                // A call into another section names its target by symbol: a function
                // symbol is the target itself, a section symbol is offset by the immediate
                // as the linker left it (aya resolves it the same way).
                Some(RelocationTarget::Symbol(symbol_index)) => {
                    let target = file.symbol_by_index(*symbol_index)?;
                    let target_section =
                        target
                            .section_index()
                            .ok_or_else(|| Error::UnknownCallTarget {
                                function: name.clone(),
                            })?;
                    if target.kind() == object::SymbolKind::Section {
                        (target_section, relative(target.address())?)
                    } else {
                        (target_section, target.address())
                    }
                }
                _ => (section_index, relative(offset)?),
            };
            calls.push(target);
        }
        functions.push(Function {
            name,
            is_program: section.name()? != ".text",
            section: section_index,
            start,
            depth: own_stack_depth(code),
            calls,
        });
    }
    let by_start: HashMap<(SectionIndex, u64), usize> = functions
        .iter()
        .enumerate()
        .map(|(index, function)| ((function.section, function.start), index))
        .collect();
    let mut depths = HashMap::new();
    for (index, function) in functions.iter().enumerate() {
        if !function.is_program {
            continue;
        }
        let depth = chain_depth(&functions, &by_start, index, &mut Vec::new())?;
        depths.insert(function.name.clone(), depth);
    }
    Ok(depths)
}

/// The verifier's per-frame rounding with the JIT on (`round_up_stack_depth`).
fn rounded(depth: u32) -> u32 {
    depth.div_ceil(16) * 16
}

/// Deepest combined stack from `index` down any call chain.
fn chain_depth(
    functions: &[Function],
    by_start: &HashMap<(SectionIndex, u64), usize>,
    index: usize,
    path: &mut Vec<usize>,
) -> Result<u32> {
    let function = &functions[index];
    if path.contains(&index) {
        return Err(Error::Recursion {
            function: function.name.clone(),
        });
    }
    path.push(index);
    let mut deepest_callee = 0;
    for target in &function.calls {
        let callee = *by_start
            .get(target)
            .ok_or_else(|| Error::UnknownCallTarget {
                function: function.name.clone(),
            })?;
        deepest_callee = deepest_callee.max(chain_depth(functions, by_start, callee, path)?);
    }
    path.pop();
    Ok(rounded(function.depth) + deepest_callee)
}

/// The deepest stack byte a function's code touches: a load or store at `r10 + off`, or a
/// pointer `r10 + k` (kept in a register, possibly moved or offset further) that is used
/// for an access or handed to a helper.
fn own_stack_depth(code: &[u8]) -> u32 {
    // Offset from r10 that each register holds, when known.
    let mut frame_offsets: [Option<i64>; 11] = [None; 11];
    frame_offsets[FRAME_POINTER as usize] = Some(0);
    let mut deepest: i64 = 0;
    let mut skip_next = false;
    for instruction in code.chunks_exact(INSTRUCTION_BYTES as usize) {
        if skip_next {
            skip_next = false;
            continue;
        }
        let opcode = instruction[0];
        let dst = (instruction[1] & 0x0f) as usize;
        let src = (instruction[1] >> 4) as usize;
        let off = i64::from(i16::from_le_bytes([instruction[2], instruction[3]]));
        let imm = i64::from(i32::from_le_bytes([
            instruction[4],
            instruction[5],
            instruction[6],
            instruction[7],
        ]));
        let class = opcode & 0x07;
        let known = |register: usize| frame_offsets.get(register).copied().flatten();
        match class {
            // BPF_LDX: dst = *(src + off)
            0x01 => {
                if let Some(base) = known(src) {
                    deepest = deepest.max(-(base + off));
                }
                if dst < FRAME_POINTER as usize {
                    frame_offsets[dst] = None;
                }
            }
            // BPF_ST / BPF_STX: *(dst + off) = imm / src (atomics included)
            0x02 | 0x03 => {
                if let Some(base) = known(dst) {
                    deepest = deepest.max(-(base + off));
                }
            }
            // BPF_ALU64
            0x07 => {
                if dst >= FRAME_POINTER as usize {
                    continue;
                }
                let uses_register = opcode & 0x08 != 0;
                let operation = opcode & 0xf0;
                frame_offsets[dst] = match (operation, uses_register) {
                    // mov dst, src
                    (0xb0, true) => known(src),
                    // add dst, imm / sub dst, imm
                    (0x00, false) => known(dst).map(|base| base + imm),
                    (0x10, false) => known(dst).map(|base| base - imm),
                    _ => None,
                };
                if let Some(base) = frame_offsets[dst] {
                    deepest = deepest.max(-base);
                }
            }
            // BPF_JMP: a call clobbers r0-r5.
            0x05 if opcode == OP_CALL => {
                frame_offsets[..=5].fill(None);
            }
            // BPF_LD (imm64 takes two slots) and 32-bit ALU: the destination is no pointer.
            0x00 | 0x04 => {
                if opcode == OP_LOAD_IMM64 {
                    skip_next = true;
                }
                if dst < FRAME_POINTER as usize {
                    frame_offsets[dst] = None;
                }
            }
            _ => {}
        }
    }
    u32::try_from(deepest.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instruction(opcode: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut bytes = [0; 8];
        bytes[0] = opcode;
        bytes[1] = dst | (src << 4);
        bytes[2..4].copy_from_slice(&off.to_le_bytes());
        bytes[4..8].copy_from_slice(&imm.to_le_bytes());
        bytes
    }

    fn code(instructions: &[[u8; 8]]) -> Vec<u8> {
        instructions.concat()
    }

    #[test]
    fn a_store_below_the_frame_pointer_sets_the_depth() {
        // *(u64 *)(r10 - 72) = r1; r0 = 0; exit
        let code = code(&[
            instruction(0x7b, 10, 1, -72, 0),
            instruction(0xb7, 0, 0, 0, 0),
            instruction(0x95, 0, 0, 0, 0),
        ]);
        assert_eq!(own_stack_depth(&code), 72);
    }

    #[test]
    fn a_pointer_into_the_frame_counts_where_it_points() {
        // r2 = r10; r2 += -200; r3 = r2; *(u32 *)(r3 + 4) = 0; call helper
        let code = code(&[
            instruction(0xbf, 2, 10, 0, 0),
            instruction(0x07, 2, 0, 0, -200),
            instruction(0xbf, 3, 2, 0, 0),
            instruction(0x62, 3, 0, 4, 0),
            instruction(0x85, 0, 0, 0, 1),
        ]);
        assert_eq!(own_stack_depth(&code), 200);
    }

    #[test]
    fn a_call_forgets_pointers_in_caller_saved_registers() {
        // r1 = r10; call helper; r1 += -400 (r1 is the helper's result now, not the frame)
        let code = code(&[
            instruction(0xbf, 1, 10, 0, 0),
            instruction(0x85, 0, 0, 0, 1),
            instruction(0x07, 1, 0, 0, -400),
        ]);
        assert_eq!(own_stack_depth(&code), 0);
    }

    #[test]
    fn frames_round_to_sixteen_bytes() {
        assert_eq!(rounded(0), 0);
        assert_eq!(rounded(1), 16);
        assert_eq!(rounded(72), 80);
        assert_eq!(rounded(592), 592);
    }

    #[test]
    fn the_embedded_programs_have_figures_for_every_hook() {
        let depths = stack_depths(crate::probes::PROGRAMS_OBJECT).expect("analysable object");
        for (program, _) in crate::probes::CONNECTION_HOOKS {
            let depth = depths
                .get(program)
                .unwrap_or_else(|| panic!("{program} has no stack figure in {depths:?}"));
            assert!(
                *depth <= STACK_MARGIN_BYTES,
                "{program} uses {depth} bytes of stack, over the {STACK_MARGIN_BYTES}-byte margin"
            );
        }
        for program in crate::probes::L7_PROGRAMS {
            assert!(
                depths.contains_key(program),
                "{program} missing from {depths:?}"
            );
        }
    }
}
