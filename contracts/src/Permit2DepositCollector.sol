// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";

import {Permit2} from "./Permit2.sol";
import {IDepositCollector} from "./X402BatchSettlement.sol";

/// @title The x402 `batch-settlement` deposit collector for any ERC-20 through Permit2: the payer
/// signs a Permit2 witness transfer naming this collector as spender and the channel id as
/// witness, so the signature can fund only that channel; the tokens go straight from the payer to
/// the batch-settlement contract, the only caller this collector serves. An optional EIP-2612
/// signature approves Permit2 first, for a payer who has not (gas sponsoring).
/// @dev No constructor state (the code is placed at the address the clients expect).
contract Permit2DepositCollector is IDepositCollector {
    /// The batch-settlement contract, at its canonical address.
    address public constant x402BatchSettlement = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003;
    /// Permit2, at its canonical address.
    Permit2 public constant PERMIT2 = Permit2(0x000000000022D473030F116dDEE9F6B43aC78BA3);

    string public constant DEPOSIT_WITNESS_TYPE_STRING =
        "DepositWitness witness)DepositWitness(bytes32 channelId)TokenPermissions(address token,uint256 amount)";
    bytes32 public constant DEPOSIT_WITNESS_TYPEHASH = keccak256("DepositWitness(bytes32 channelId)");

    /// The EIP-2612 approval failed (already used, or not the payer's); the transfer then needs an
    /// existing approval of Permit2.
    event EIP2612PermitFailedWithReason(address indexed token, address indexed owner, string reason);
    event EIP2612PermitFailedWithPanic(address indexed token, address indexed owner, uint256 errorCode);
    event EIP2612PermitFailedWithData(address indexed token, address indexed owner, bytes data);

    /// Called by anyone but the batch-settlement contract.
    error OnlyX402BatchSettlement();
    /// The EIP-2612 approval is not for the deposit's amount.
    error Permit2612AmountMismatch();

    /// Pulls `amount` from `payer` on its Permit2 signature in `collectorData` (`abi.encode(uint256
    /// nonce, uint256 deadline, bytes permit2Signature, bytes eip2612Permit)`, the last empty or
    /// `abi.encode(uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s)`).
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
    {
        if (msg.sender != x402BatchSettlement) revert OnlyX402BatchSettlement();
        (uint256 nonce, uint256 deadline, bytes memory permit2Signature, bytes memory eip2612) =
            abi.decode(collectorData, (uint256, uint256, bytes, bytes));
        if (eip2612.length > 0) _approvePermit2(payer, token, amount, eip2612);
        PERMIT2.permitWitnessTransferFrom(
            Permit2.PermitTransferFrom({
                permitted: Permit2.TokenPermissions({token: token, amount: amount}), nonce: nonce, deadline: deadline
            }),
            Permit2.SignatureTransferDetails({to: x402BatchSettlement, requestedAmount: amount}),
            payer,
            keccak256(abi.encode(DEPOSIT_WITNESS_TYPEHASH, channelId)),
            DEPOSIT_WITNESS_TYPE_STRING,
            permit2Signature
        );
    }

    function _approvePermit2(address payer, address token, uint256 amount, bytes memory eip2612) private {
        (uint256 value, uint256 permitDeadline, uint8 v, bytes32 r, bytes32 s) =
            abi.decode(eip2612, (uint256, uint256, uint8, bytes32, bytes32));
        if (value != amount) revert Permit2612AmountMismatch();
        try IERC20Permit(token).permit(payer, address(PERMIT2), value, permitDeadline, v, r, s) {}
        catch Error(string memory reason) {
            emit EIP2612PermitFailedWithReason(token, payer, reason);
        } catch Panic(uint256 code) {
            emit EIP2612PermitFailedWithPanic(token, payer, code);
        } catch (bytes memory data) {
            emit EIP2612PermitFailedWithData(token, payer, data);
        }
    }
}
