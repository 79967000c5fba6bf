// web/crypto.js: the `crypto` global. Randomness comes from the host-seeded DRBG (H.fillRandom);
// SHA digests and HMAC are computed by the host (outbox kinds crypto.digest / crypto.hmac), so
// crypto.subtle supports exactly: digest (SHA-1/256/384/512) and HMAC keys (importKey, exportKey,
// generateKey, sign, verify). Everything else rejects with NotSupportedError.

(() => {
  const define = (name, value) =>
    Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
  const illegal = {};
  const domError = (message, name) => new DOMException(message, name);

  const HASHES = { "SHA-1": 512, "SHA-256": 512, "SHA-384": 1024, "SHA-512": 1024 };  // -> HMAC block size in bits
  const JWK_ALG = { "SHA-1": "HS1", "SHA-256": "HS256", "SHA-384": "HS384", "SHA-512": "HS512" };
  const KNOWN_ALGORITHMS = [
    "RSASSA-PKCS1-v1_5", "RSA-PSS", "RSA-OAEP", "ECDSA", "ECDH", "Ed25519", "X25519", "AES-CTR", "AES-CBC",
    "AES-GCM", "AES-KW", "HKDF", "PBKDF2",
  ];

  // ---- helpers ------------------------------------------------------------------------------------
  function bufferSourceBytes(data, what) {
    // A copy, taken at call time, as WebCrypto requires (later writes by the caller do not count).
    if (data instanceof ArrayBuffer) return new Uint8Array(data.slice(0));
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
    throw new TypeError(`${what} must be an ArrayBuffer or an ArrayBufferView`);
  }

  const toBase64Url = (bytes) => H.bytesToBase64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  function fromBase64Url(s) {
    if (typeof s !== "string" || !/^[A-Za-z0-9_-]*$/.test(s) || s.length % 4 === 1) throw domError("Invalid base64url in JWK member k", "DataError");
    const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
    return H.base64ToBytes(b64);
  }

  // WebIDL AlgorithmIdentifier: an object with a name, or anything else converted to a string.
  function algorithmName(alg, what) {
    if (alg === null || (typeof alg !== "object" && typeof alg !== "function")) return String(alg);
    if (alg.name === undefined) throw new TypeError(`${what}: the algorithm object must have a name`);
    return String(alg.name);
  }

  // Canonical spelling of a supported name, or NotSupportedError naming what was asked.
  function normalizeName(name, allowed, op) {
    const upper = name.toUpperCase();
    for (const a of allowed) if (a.toUpperCase() === upper) return a;
    for (const a of KNOWN_ALGORITHMS.concat(Object.keys(HASHES), ["HMAC"])) {
      if (a.toUpperCase() === upper) throw new H.NotSupportedError(`crypto.subtle.${op} with ${a}`);
    }
    throw new H.NotSupportedError(`crypto.subtle.${op} with the algorithm ${JSON.stringify(name)}`);
  }

  function hashName(hash, op) {
    if (hash === undefined) throw new TypeError(`crypto.subtle.${op}: HMAC needs a hash`);
    return normalizeName(algorithmName(hash, `crypto.subtle.${op}`), Object.keys(HASHES), op);
  }

  function hmacParams(alg, op) {
    const name = normalizeName(algorithmName(alg, `crypto.subtle.${op}`), ["HMAC"], op);
    if (typeof alg !== "object") throw new TypeError(`crypto.subtle.${op}: HMAC needs {name: "HMAC", hash}`);
    const hash = hashName(alg.hash, op);
    let length = null;
    if (alg.length !== undefined) {
      length = Number(alg.length);
      if (!Number.isInteger(length) || length < 0 || length > 0xffffffff) throw new TypeError(`crypto.subtle.${op}: length must be an unsigned integer`);
    }
    return { name, hash, length };
  }

  function checkUsages(usages, op) {
    if (usages === null || usages === undefined || typeof usages[Symbol.iterator] !== "function" || typeof usages === "string") {
      throw new TypeError(`crypto.subtle.${op}: keyUsages must be an array`);
    }
    const list = Array.from(usages, String);
    for (const u of list) {
      if (u !== "sign" && u !== "verify") throw domError(`Cannot create an HMAC key with usage ${JSON.stringify(u)}`, "SyntaxError");
    }
    if (list.length === 0) throw domError("Usages cannot be empty when creating a key", "SyntaxError");
    return ["sign", "verify"].filter((u) => list.includes(u));
  }

  // ---- CryptoKey: the key bytes live only in this WeakMap ------------------------------------------
  const keys = new WeakMap();
  const keyRecord = (self) => {
    const k = keys.get(self);
    if (!k) throw new TypeError("Illegal invocation: not a CryptoKey");
    return k;
  };

  class CryptoKey {
    constructor(token) {
      if (token !== illegal) throw new TypeError("Illegal constructor: CryptoKeys come from crypto.subtle");
    }
    get type() { return keyRecord(this).type; }
    get extractable() { return keyRecord(this).extractable; }
    get algorithm() { return keyRecord(this).algorithmView; }
    get usages() { return keyRecord(this).usagesView; }
  }
  Object.defineProperty(CryptoKey.prototype, Symbol.toStringTag, { value: "CryptoKey", configurable: true });

  function makeHmacKey(bytes, hash, extractable, usages) {
    const key = new CryptoKey(illegal);
    const length = bytes.length * 8;
    keys.set(key, {
      type: "secret",
      extractable: !!extractable,
      hash,
      length,
      usages,
      bytes,
      // What user code sees; our operations never read these (they may be mutated).
      algorithmView: { name: "HMAC", hash: { name: hash }, length },
      usagesView: usages.slice(),
    });
    return key;
  }

  function checkLength(length, bytes, op) {
    if (length === null) return;
    if (length === bytes * 8) return;
    if (length > bytes * 8 || length <= bytes * 8 - 8) throw domError(`crypto.subtle.${op}: the length does not match the key data`, "DataError");
    throw new H.NotSupportedError(`crypto.subtle.${op} with an HMAC length that is not a whole number of bytes`);
  }

  function keyFor(key, usage, op) {
    if (!keys.has(key)) throw new TypeError(`crypto.subtle.${op}: the key must be a CryptoKey`);
    const k = keys.get(key);
    if (!k.usages.includes(usage)) throw domError(`The key does not allow ${usage}`, "InvalidAccessError");
    return k;
  }

  async function hmac(k, data) {
    const b64 = await H.request("crypto.hmac", { hash: k.hash, key: H.bytesToBase64(k.bytes), data: H.bytesToBase64(data) });
    return H.base64ToBytes(b64);
  }

  // ---- SubtleCrypto -------------------------------------------------------------------------------
  const unsupported = (op) => async function () {
    throw new H.NotSupportedError(`crypto.subtle.${op}`);
  };

  class SubtleCrypto {
    constructor(token) {
      if (token !== illegal) throw new TypeError("Illegal constructor: use crypto.subtle");
    }

    async digest(algorithm, data) {
      const name = normalizeName(algorithmName(algorithm, "crypto.subtle.digest"), Object.keys(HASHES), "digest");
      const bytes = bufferSourceBytes(data, "crypto.subtle.digest: data");
      const b64 = await H.request("crypto.digest", { algorithm: name, data: H.bytesToBase64(bytes) });
      return H.base64ToBytes(b64).buffer;
    }

    async importKey(format, keyData, algorithm, extractable, keyUsages) {
      const params = hmacParams(algorithm, "importKey");
      const usages = checkUsages(keyUsages, "importKey");
      let bytes;
      if (format === "raw") {
        bytes = bufferSourceBytes(keyData, "crypto.subtle.importKey: keyData");
      } else if (format === "jwk") {
        if (keyData === null || typeof keyData !== "object" || ArrayBuffer.isView(keyData) || keyData instanceof ArrayBuffer) {
          throw new TypeError("crypto.subtle.importKey: a jwk keyData must be an object");
        }
        if (keyData.kty !== "oct") throw domError("The JWK kty must be \"oct\" for HMAC", "DataError");
        bytes = fromBase64Url(keyData.k);
        if (keyData.alg !== undefined && keyData.alg !== JWK_ALG[params.hash]) {
          throw domError(`The JWK alg ${JSON.stringify(keyData.alg)} does not match ${params.hash}`, "DataError");
        }
        if (keyData.use !== undefined && keyData.use !== "sig") throw domError("The JWK use must be \"sig\"", "DataError");
        if (keyData.key_ops !== undefined) {
          if (!Array.isArray(keyData.key_ops)) throw domError("The JWK key_ops must be an array", "DataError");
          for (const u of usages) if (!keyData.key_ops.includes(u)) throw domError(`The JWK key_ops do not allow ${u}`, "DataError");
        }
        if (keyData.ext === false && extractable) throw domError("The JWK is not extractable", "DataError");
      } else if (format === "pkcs8" || format === "spki") {
        throw new H.NotSupportedError(`crypto.subtle.importKey of HMAC keys in ${format} format`);
      } else {
        throw new TypeError(`crypto.subtle.importKey: unknown key format ${JSON.stringify(format)}`);
      }
      if (bytes.length === 0) throw domError("HMAC keys must not be empty", "DataError");
      checkLength(params.length, bytes.length, "importKey");
      return makeHmacKey(bytes, params.hash, extractable, usages);
    }

    async exportKey(format, key) {
      if (!keys.has(key)) throw new TypeError("crypto.subtle.exportKey: the key must be a CryptoKey");
      const k = keys.get(key);
      if (!k.extractable) throw domError("The key is not extractable", "InvalidAccessError");
      if (format === "raw") return k.bytes.slice().buffer;
      if (format === "jwk") {
        return { alg: JWK_ALG[k.hash], ext: true, k: toBase64Url(k.bytes), key_ops: k.usages.slice(), kty: "oct" };
      }
      if (format === "pkcs8" || format === "spki") throw new H.NotSupportedError(`crypto.subtle.exportKey of HMAC keys in ${format} format`);
      throw new TypeError(`crypto.subtle.exportKey: unknown key format ${JSON.stringify(format)}`);
    }

    async generateKey(algorithm, extractable, keyUsages) {
      const params = hmacParams(algorithm, "generateKey");
      const usages = checkUsages(keyUsages, "generateKey");
      const length = params.length === null ? HASHES[params.hash] : params.length;
      if (length === 0) throw domError("HMAC key length must not be zero", "OperationError");
      if (length % 8 !== 0) throw new H.NotSupportedError("crypto.subtle.generateKey with an HMAC length that is not a whole number of bytes");
      return makeHmacKey(H.fillRandom(new Uint8Array(length / 8)), params.hash, extractable, usages);
    }

    async sign(algorithm, key, data) {
      normalizeName(algorithmName(algorithm, "crypto.subtle.sign"), ["HMAC"], "sign");
      const k = keyFor(key, "sign", "sign");
      const bytes = bufferSourceBytes(data, "crypto.subtle.sign: data");
      return (await hmac(k, bytes)).buffer;
    }

    async verify(algorithm, key, signature, data) {
      normalizeName(algorithmName(algorithm, "crypto.subtle.verify"), ["HMAC"], "verify");
      const k = keyFor(key, "verify", "verify");
      const sig = bufferSourceBytes(signature, "crypto.subtle.verify: signature");
      const bytes = bufferSourceBytes(data, "crypto.subtle.verify: data");
      const mac = await hmac(k, bytes);
      if (mac.length !== sig.length) return false;
      // Constant time in the contents: every byte is compared whatever differs first.
      let diff = 0;
      for (let i = 0; i < mac.length; i++) diff |= mac[i] ^ sig[i];
      return diff === 0;
    }
  }
  for (const op of ["encrypt", "decrypt", "deriveBits", "deriveKey", "wrapKey", "unwrapKey"]) {
    Object.defineProperty(SubtleCrypto.prototype, op, { value: unsupported(op), writable: true, configurable: true });
  }
  Object.defineProperty(SubtleCrypto.prototype, Symbol.toStringTag, { value: "SubtleCrypto", configurable: true });

  // ---- Crypto ---------------------------------------------------------------------------------------
  const INTEGER_ARRAYS = [Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array, BigInt64Array, BigUint64Array];
  const subtle = new SubtleCrypto(illegal);

  class Crypto {
    constructor(token) {
      if (token !== illegal) throw new TypeError("Illegal constructor: use the crypto global");
    }

    get subtle() { return subtle; }

    getRandomValues(array) {
      if (!ArrayBuffer.isView(array)) throw new TypeError("crypto.getRandomValues: the argument must be an integer typed array");
      if (!INTEGER_ARRAYS.some((T) => array instanceof T)) {
        throw domError("crypto.getRandomValues: the argument must be an integer typed array", "TypeMismatchError");
      }
      if (array.byteLength > 65536) {
        throw domError(`crypto.getRandomValues: ${array.byteLength} bytes requested, at most 65536 are allowed`, "QuotaExceededError");
      }
      H.fillRandom(new Uint8Array(array.buffer, array.byteOffset, array.byteLength));
      return array;
    }

    randomUUID() {
      const b = H.fillRandom(new Uint8Array(16));
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
      return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
    }
  }
  Object.defineProperty(Crypto.prototype, Symbol.toStringTag, { value: "Crypto", configurable: true });

  define("Crypto", Crypto);
  define("CryptoKey", CryptoKey);
  define("SubtleCrypto", SubtleCrypto);
  define("crypto", new Crypto(illegal));
})();
