"""BTF's type kinds (enum btf_kind, include/uapi/linux/btf.h) and how many 32-bit words each kind's trailing
records take: what tracer/kernel/btf.py needs to walk the type section. Pure data."""

# enum btf_kind (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
MAX_KIND = ENUM64

# Trailing data after the 3-word btf_type header, in 32-bit words: a fixed part plus a part per vlen entry.
# Getting one wrong desyncs the whole walk, so both tables are spelled out for every kind.
FIXED_WORDS = [0] * 32
VLEN_WORDS = [0] * 32
FIXED_WORDS[INT] = 1  # u32 encoding
FIXED_WORDS[ARRAY] = 3  # struct btf_array {type, index_type, nelems}
VLEN_WORDS[STRUCT] = 3  # struct btf_member {name_off, type, offset}
VLEN_WORDS[UNION] = 3
VLEN_WORDS[ENUM] = 2  # struct btf_enum {name_off, s32 val}
VLEN_WORDS[FUNC_PROTO] = 2  # struct btf_param {name_off, type}
FIXED_WORDS[VAR] = 1  # struct btf_var {linkage}
VLEN_WORDS[DATASEC] = 3  # struct btf_var_secinfo {type, offset, size}
FIXED_WORDS[DECL_TAG] = 1  # struct btf_decl_tag {s32 component_idx}
VLEN_WORDS[ENUM64] = 3  # struct btf_enum64 {name_off, val_lo32, val_hi32}

# Only these kinds are looked up by name; indexing fewer kinds keeps load() fast.
INDEXED = frozenset({INT, STRUCT, UNION, ENUM, TYPEDEF, FUNC, ENUM64})
# Kinds that only qualify or rename another type.
ALIASES = frozenset({TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG})
# Kinds whose btf_type.size_or_type is a size in bytes.
SIZED = frozenset({INT, STRUCT, UNION, ENUM, FLOAT, ENUM64})

KIND_NAMES = {
    INT: "int",
    PTR: "pointer",
    ARRAY: "array",
    STRUCT: "struct",
    UNION: "union",
    ENUM: "enum",
    FWD: "forward declaration",
    TYPEDEF: "typedef",
    VOLATILE: "volatile",
    CONST: "const",
    RESTRICT: "restrict",
    FUNC: "function",
    FUNC_PROTO: "function prototype",
    VAR: "variable",
    DATASEC: "data section",
    FLOAT: "float",
    DECL_TAG: "decl tag",
    TYPE_TAG: "type tag",
    ENUM64: "enum",
}
