// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";

/// @title The signature-transfer half of Uniswap's Permit2, written from its interface: one-time
/// token transfers a holder authorizes with an EIP-712 signature instead of a transaction, each
/// with an unordered nonce (a bitmap word per 256 nonces), a deadline and, for
/// `permitWitnessTransferFrom`, a caller-defined witness the signature also covers. The domain
/// (`name` "Permit2", no version), type strings and errors are Permit2's, so a payload signed for
/// Permit2 (as the x402 clients sign one) verifies here; the devnet places this code at Permit2's
/// canonical address. Holders approve this contract on the token once (or by EIP-2612 `permit`).
/// @dev No constructor state: the code is placed at a fixed address without running one, so the
/// domain separator is computed from `address(this)` and `block.chainid` on each use. Unlike
/// Permit2, a high-s ECDSA signature is refused (OpenZeppelin's ECDSA), and contract holders are
/// checked by ERC-1271.
contract Permit2 {
    using SafeERC20 for IERC20;

    /// The token and the most the signature lets be moved.
    struct TokenPermissions {
        address token;
        uint256 amount;
    }

    /// What the holder signed (with the spender: whoever calls).
    struct PermitTransferFrom {
        TokenPermissions permitted;
        uint256 nonce;
        uint256 deadline;
    }

    /// Where the caller sends the tokens, and how many (at most `permitted.amount`).
    struct SignatureTransferDetails {
        address to;
        uint256 requestedAmount;
    }

    /// The signature's deadline has passed.
    error SignatureExpired(uint256 signatureDeadline);
    /// More was requested than the signature permits.
    error InvalidAmount(uint256 maxAmount);
    /// The nonce was used or invalidated.
    error InvalidNonce();
    /// The signature is not the holder's.
    error InvalidSigner();

    /// The holder invalidated nonces `mask` of bitmap word `word`.
    event UnorderedNonceInvalidation(address indexed owner, uint256 word, uint256 mask);

    bytes32 public constant TOKEN_PERMISSIONS_TYPEHASH = keccak256("TokenPermissions(address token,uint256 amount)");
    bytes32 public constant PERMIT_TRANSFER_FROM_TYPEHASH = keccak256(
        "PermitTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline)TokenPermissions(address token,uint256 amount)"
    );
    /// The witness's type string is appended to this (its name, then the types it uses, sorted).
    string public constant PERMIT_WITNESS_TRANSFER_FROM_TYPEHASH_STUB =
        "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,";

    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,uint256 chainId,address verifyingContract)");
    bytes32 private constant HASHED_NAME = keccak256("Permit2");

    /// Used nonces: holder => word (nonce >> 8) => bits (nonce & 0xff).
    mapping(address => mapping(uint256 => uint256)) public nonceBitmap;

    /// The EIP-712 domain separator on this chain at this address.
    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, HASHED_NAME, block.chainid, address(this)));
    }

    /// Moves `transferDetails.requestedAmount` of the permitted token from `owner` to
    /// `transferDetails.to`, on `owner`'s signature naming the caller as spender.
    function permitTransferFrom(
        PermitTransferFrom calldata permit,
        SignatureTransferDetails calldata transferDetails,
        address owner,
        bytes calldata signature
    ) external {
        bytes32 dataHash = keccak256(
            abi.encode(
                PERMIT_TRANSFER_FROM_TYPEHASH, _hashPermissions(permit.permitted), msg.sender, permit.nonce, permit.deadline
            )
        );
        _transfer(permit, transferDetails, owner, dataHash, signature);
    }

    /// As `permitTransferFrom`, with the signature also covering `witness` (the hash of a struct
    /// the caller defines; `witnessTypeString` completes the type: `"Name name)Types…"`).
    function permitWitnessTransferFrom(
        PermitTransferFrom calldata permit,
        SignatureTransferDetails calldata transferDetails,
        address owner,
        bytes32 witness,
        string calldata witnessTypeString,
        bytes calldata signature
    ) external {
        bytes32 typeHash = keccak256(abi.encodePacked(PERMIT_WITNESS_TRANSFER_FROM_TYPEHASH_STUB, witnessTypeString));
        bytes32 dataHash = keccak256(
            abi.encode(typeHash, _hashPermissions(permit.permitted), msg.sender, permit.nonce, permit.deadline, witness)
        );
        _transfer(permit, transferDetails, owner, dataHash, signature);
    }

    /// Burns the caller's nonces `mask` in bitmap word `wordPos` (to revoke signed permits).
    function invalidateUnorderedNonces(uint256 wordPos, uint256 mask) external {
        nonceBitmap[msg.sender][wordPos] |= mask;
        emit UnorderedNonceInvalidation(msg.sender, wordPos, mask);
    }

    function _transfer(
        PermitTransferFrom calldata permit,
        SignatureTransferDetails calldata transferDetails,
        address owner,
        bytes32 dataHash,
        bytes calldata signature
    ) private {
        if (block.timestamp > permit.deadline) revert SignatureExpired(permit.deadline);
        if (transferDetails.requestedAmount > permit.permitted.amount) revert InvalidAmount(permit.permitted.amount);
        _useUnorderedNonce(owner, permit.nonce);
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", DOMAIN_SEPARATOR(), dataHash));
        if (!SignatureChecker.isValidSignatureNow(owner, digest, signature)) revert InvalidSigner();
        IERC20(permit.permitted.token).safeTransferFrom(owner, transferDetails.to, transferDetails.requestedAmount);
    }

    function _useUnorderedNonce(address from, uint256 nonce) private {
        uint256 bit = 1 << (nonce & 0xff);
        uint256 flipped = nonceBitmap[from][nonce >> 8] ^= bit;
        if (flipped & bit == 0) revert InvalidNonce();
    }

    function _hashPermissions(TokenPermissions calldata permitted) private pure returns (bytes32) {
        return keccak256(abi.encode(TOKEN_PERMISSIONS_TYPEHASH, permitted.token, permitted.amount));
    }
}
