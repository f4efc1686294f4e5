// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";

import {Permit2} from "./Permit2.sol";

/// @title The x402 `upto` scheme's settlement contract, written from the interface the official
/// x402 clients and facilitators call: the payer signs a Permit2 witness transfer of at most a
/// maximum, naming this contract as spender and, in the witness, the recipient (`to`), the one
/// facilitator allowed to settle it and when it becomes valid; after serving the request, that
/// facilitator settles the amount actually owed, any amount up to the maximum, once (the Permit2
/// nonce). Nobody else can settle it, and nobody can redirect it: the witness is signed.
/// @dev Stateless, so its code can be placed at the address the clients expect without running a
/// constructor; Permit2 is at its canonical address. No reentrancy guard is needed: a settlement
/// reentered from a token's transfer would come from the token, not the named facilitator.
contract X402UptoPermit2Proxy {
    /// Permit2, where every chain has it (and the devnet places it).
    Permit2 public constant PERMIT2 = Permit2(0x000000000022D473030F116dDEE9F6B43aC78BA3);

    /// The witness's type, as appended to Permit2's stub (types sorted after the witness).
    string public constant WITNESS_TYPE_STRING =
        "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,address facilitator,uint256 validAfter)";
    bytes32 public constant WITNESS_TYPEHASH = keccak256("Witness(address to,address facilitator,uint256 validAfter)");

    /// What the payer binds besides the amount: who is paid, who may settle, and from when.
    struct Witness {
        address to;
        address facilitator;
        uint256 validAfter;
    }

    /// An EIP-2612 approval of Permit2, for a payer who has not approved it yet.
    struct EIP2612Permit {
        uint256 value;
        uint256 deadline;
        bytes32 r;
        bytes32 s;
        uint8 v;
    }

    /// A payment was settled: the payer's Permit2 `nonce` paid `amount` of `token` to `to`.
    event Settled(
        address indexed owner,
        address indexed to,
        address indexed facilitator,
        address token,
        uint256 amount,
        uint256 nonce
    );

    /// The amount is zero (nothing to settle: send no transaction).
    error InvalidAmount();
    /// The payer is the zero address.
    error InvalidOwner();
    /// The recipient is the zero address.
    error InvalidDestination();
    /// Settled before the witness's `validAfter`.
    error PaymentTooEarly();
    /// More than the signed maximum.
    error AmountExceedsPermitted();
    /// The caller is not the facilitator the payer named.
    error UnauthorizedFacilitator();
    /// The EIP-2612 approval is not for the signed maximum.
    error Permit2612AmountMismatch();

    /// Settles `amount` (at most the signed maximum) of the payer's signed authorization.
    function settle(
        Permit2.PermitTransferFrom calldata permit,
        uint256 amount,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) external {
        _settle(permit, amount, owner, witness, signature);
    }

    /// As `settle`, first approving Permit2 with the payer's EIP-2612 signature. A failed
    /// approval is ignored (it may already have been used, e.g. sent by someone else first); the
    /// transfer then needs an existing approval.
    function settleWithPermit(
        EIP2612Permit calldata permit2612,
        Permit2.PermitTransferFrom calldata permit,
        uint256 amount,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) external {
        if (permit2612.value != permit.permitted.amount) revert Permit2612AmountMismatch();
        try IERC20Permit(permit.permitted.token).permit(
            owner, address(PERMIT2), permit2612.value, permit2612.deadline, permit2612.v, permit2612.r, permit2612.s
        ) {} catch {}
        _settle(permit, amount, owner, witness, signature);
    }

    function _settle(
        Permit2.PermitTransferFrom calldata permit,
        uint256 amount,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) private {
        if (amount == 0) revert InvalidAmount();
        if (amount > permit.permitted.amount) revert AmountExceedsPermitted();
        if (owner == address(0)) revert InvalidOwner();
        if (witness.to == address(0)) revert InvalidDestination();
        if (msg.sender != witness.facilitator) revert UnauthorizedFacilitator();
        if (block.timestamp < witness.validAfter) revert PaymentTooEarly();
        bytes32 witnessHash = keccak256(abi.encode(WITNESS_TYPEHASH, witness.to, witness.facilitator, witness.validAfter));
        PERMIT2.permitWitnessTransferFrom(
            permit,
            Permit2.SignatureTransferDetails({to: witness.to, requestedAmount: amount}),
            owner,
            witnessHash,
            WITNESS_TYPE_STRING,
            signature
        );
        emit Settled(owner, witness.to, witness.facilitator, permit.permitted.token, amount, permit.nonce);
    }
}
