//! Reading and making the few datum kinds the hot path touches (text, text[], inet,
//! cidr[], uuid) directly, without pgrx's conversions, which look type names up per
//! call and go through `inet_out` text.

use std::marker::PhantomData;

use pgrx::pg_sys;

/// A value longer than the caller's limit, found out before it was read.
pub(crate) struct TooLong;

/// The memory of the function call being served, as a lifetime: argument bytes and the
/// datums read for the call are borrowed from it, so none can outlive the call (whose
/// memory context Postgres resets after it returns).
pub(crate) struct CallMemory(PhantomData<*mut ()>);

impl CallMemory {
    /// # Safety
    /// Call at the start of a function call, and keep the value on that call's stack:
    /// the current memory context lives at least as long as it.
    pub(crate) unsafe fn of_this_call() -> CallMemory {
        CallMemory(PhantomData)
    }
}

/// The bytes of a text (or any varlena) datum, detoasted if needed.
///
/// # Safety
/// `datum` is a varlena; the bytes are valid while the datum's (or the detoasted
/// copy's) memory context lives, which the caller's `'a` must not outlast.
pub(crate) unsafe fn bytes<'a>(datum: pg_sys::Datum) -> &'a [u8] {
    // SAFETY: a detoasted, possibly short-header varlena: its data and length are read
    // with the macros made for that.
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        std::slice::from_raw_parts(
            pgrx::varlena::vardata_any(v).cast::<u8>(),
            pgrx::varlena::varsize_any_exhdr(v),
        )
    }
}

/// The size a varlena datum has once detoasted, read without detoasting it, so a huge
/// argument can be refused before it is decompressed or fetched.
///
/// # Safety
/// `datum` is a varlena.
pub(crate) unsafe fn raw_size(datum: pg_sys::Datum) -> usize {
    // SAFETY: reads the header or toast pointer of a varlena.
    unsafe { pg_sys::toast_raw_datum_size(datum) }
}

/// A text datum as a string (bytes that are not UTF-8 become replacement characters).
///
/// # Safety
/// `datum` is a text.
pub(crate) unsafe fn text_string(datum: pg_sys::Datum) -> String {
    // SAFETY: a text is a varlena; the bytes are copied before the call returns.
    unsafe { String::from_utf8_lossy(bytes(datum)).into_owned() }
}

/// A new text datum in the current memory context.
pub(crate) fn text_datum(s: &[u8]) -> pg_sys::Datum {
    // SAFETY: copies `s` (pointer and length of a live slice) into a palloc'd text.
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            s.as_ptr().cast(),
            s.len() as i32,
        ))
    }
}

/// A detoasted, flat copy of a varlena datum in the current memory context.
///
/// # Safety
/// `datum` is a varlena.
pub(crate) unsafe fn copy(datum: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: copies a varlena into the current memory context.
    unsafe { pg_sys::Datum::from(pg_sys::pg_detoast_datum_copy(datum.cast_mut_ptr())) }
}

/// A copy of a fixed-length by-reference datum (uuid: 16 bytes).
///
/// # Safety
/// `datum` points to at least `len` readable bytes.
pub(crate) unsafe fn copy_fixed(datum: pg_sys::Datum, len: usize) -> pg_sys::Datum {
    // SAFETY: `len` bytes from the datum into as many freshly palloc'd ones.
    unsafe {
        let to = pg_sys::palloc(len);
        std::ptr::copy_nonoverlapping(datum.cast_mut_ptr::<u8>(), to.cast::<u8>(), len);
        pg_sys::Datum::from(to)
    }
}

/// The elements of a one-type array of varlenas, None for NULL elements.
///
/// # Safety
/// `array` is an array of `element_type`, a varlena type aligned on int (text, cidr).
unsafe fn elements(array: pg_sys::Datum, element_type: pg_sys::Oid) -> Vec<Option<pg_sys::Datum>> {
    // SAFETY: deconstruct_array with the element type's own length, byval and alignment
    // fills `n` values and nulls, palloc'd in the current context.
    unsafe {
        let array = pg_sys::pg_detoast_datum(array.cast_mut_ptr()).cast::<pg_sys::ArrayType>();
        let mut values = std::ptr::null_mut();
        let mut nulls = std::ptr::null_mut();
        let mut n = 0;
        pg_sys::deconstruct_array(
            array,
            element_type,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
            &mut values,
            &mut nulls,
            &mut n,
        );
        let n = n.max(0) as usize;
        if n == 0 {
            return Vec::new();
        }
        let values = std::slice::from_raw_parts(values, n);
        let nulls = std::slice::from_raw_parts(nulls, n);
        values
            .iter()
            .zip(nulls)
            .map(|(v, null)| (!null).then_some(*v))
            .collect()
    }
}

/// How many elements an array datum holds, from its header: no element is read.
///
/// # Safety
/// `array` is an array datum.
pub(crate) unsafe fn array_len(array: pg_sys::Datum) -> usize {
    // SAFETY: a detoasted array starts with ArrayType, its dimensions right after it.
    unsafe {
        let array = pg_sys::pg_detoast_datum(array.cast_mut_ptr()).cast::<pg_sys::ArrayType>();
        // ARR_DIMS: the dimensions follow the fixed header.
        let dims = array
            .cast::<u8>()
            .add(std::mem::size_of::<pg_sys::ArrayType>())
            .cast::<i32>();
        pg_sys::ArrayGetNItems((*array).ndim, dims).max(0) as usize
    }
}

/// A text[] datum's elements as bytes (None for NULL), borrowed from its memory.
///
/// # Safety
/// `array` is a text[] datum that outlives the result.
pub(crate) unsafe fn text_array_bytes<'a>(array: pg_sys::Datum) -> Vec<Option<&'a [u8]>> {
    // SAFETY: text elements are varlenas; each is detoasted into the current context.
    unsafe {
        elements(array, pg_sys::TEXTOID)
            .into_iter()
            .map(|e| e.map(|d| bytes(d)))
            .collect()
    }
}

/// Is an array datum empty? Read from its header where it lies (a short-header array in
/// a buffer page is neither copied nor converted): Postgres gives every empty array
/// zero dimensions.
///
/// # Safety
/// `array` is an array datum.
pub(crate) unsafe fn array_is_empty(array: pg_sys::Datum) -> bool {
    // SAFETY: after the varlena header (short or not) an array starts with `ndim`, an
    // int32 that need not be aligned in a packed datum.
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(array.cast_mut_ptr());
        std::ptr::read_unaligned(pgrx::varlena::vardata_any(v).cast::<i32>()) == 0
    }
}

/// A text[] datum as strings (not UTF-8: replaced characters, which match no scope).
///
/// # Safety
/// `array` is a text[].
pub(crate) unsafe fn text_array(array: pg_sys::Datum) -> Vec<Option<String>> {
    // SAFETY: the elements' bytes are copied before the call returns.
    unsafe { text_array_bytes(array) }
        .into_iter()
        .map(|e| e.map(|b| String::from_utf8_lossy(b).into_owned()))
        .collect()
}

/// An inet or cidr value's parts: (is IPv6, prefix bits, address bytes), the bytes
/// borrowed from the datum.
pub(crate) type InetParts<'a> = (bool, u8, &'a [u8]);

/// Postgres' `inet_struct`: family (PGSQL_AF_INET = 2, PGSQL_AF_INET6 = 3), bits, address.
///
/// # Safety
/// `datum` is an inet or cidr that outlives `'a`.
pub(crate) unsafe fn inet<'a>(datum: pg_sys::Datum) -> Option<InetParts<'a>> {
    // SAFETY: inet and cidr are varlenas; the length is checked before each read.
    let b = unsafe { bytes(datum) };
    match b {
        [2, bits, addr @ ..] if addr.len() >= 4 => Some((false, *bits, &addr[..4])),
        [3, bits, addr @ ..] if addr.len() >= 16 => Some((true, *bits, &addr[..16])),
        _ => None,
    }
}

/// The address of an `inet` datum (the mask is ignored), as a client address.
///
/// # Safety
/// `datum` is an inet.
pub(crate) unsafe fn inet_address(datum: pg_sys::Datum) -> Option<std::net::IpAddr> {
    // SAFETY: as the function's contract says; the address is copied out.
    let (v6, _, addr) = unsafe { inet(datum) }?;
    crate::core::cidr::client(v6, addr)
}

/// A cidr[] datum's elements as parts; None for a NULL or unreadable element.
///
/// # Safety
/// `array` is a cidr[] that outlives `'a`.
pub(crate) unsafe fn inet_array<'a>(array: pg_sys::Datum) -> Vec<Option<InetParts<'a>>> {
    // SAFETY: the elements of a cidr[] are cidrs.
    unsafe {
        elements(array, pg_sys::CIDROID)
            .into_iter()
            .map(|e| e.and_then(|d| inet(d)))
            .collect()
    }
}
