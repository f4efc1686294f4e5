// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {IDepositCollector} from "./X402BatchSettlement.sol";

/// EIP-3009's receive-with-authorization, with the signature as bytes (USDC v2.2's overload).
interface IERC3009Receive {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external;
}

/// @title The x402 `batch-settlement` deposit collector for EIP-3009 tokens: the payer signs a
/// `ReceiveWithAuthorization` to this collector whose nonce is `keccak256(abi.encode(channelId,
/// salt))`, so the signature can fund only that channel; the collector receives the deposit and
/// forwards it to the batch-settlement contract, the only caller it serves.
/// @dev `receiveWithAuthorization` (not `transferWithAuthorization`): the token lets only the
/// named recipient redeem it, so nobody can front-run the signature into a plain transfer. No
/// constructor state (the code is placed at the address the clients expect).
contract ERC3009DepositCollector is IDepositCollector {
    using SafeERC20 for IERC20;

    /// The batch-settlement contract, at its canonical address.
    address public constant x402BatchSettlement = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003;

    /// Called by anyone but the batch-settlement contract.
    error OnlyX402BatchSettlement();

    /// Pulls `amount` from `payer` on its authorization in `collectorData` (`abi.encode(uint256
    /// validAfter, uint256 validBefore, uint256 salt, bytes signature)`) into the settlement contract.
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
    {
        if (msg.sender != x402BatchSettlement) revert OnlyX402BatchSettlement();
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(collectorData, (uint256, uint256, uint256, bytes));
        bytes32 nonce = keccak256(abi.encode(channelId, salt));
        IERC3009Receive(token)
            .receiveWithAuthorization(payer, address(this), amount, validAfter, validBefore, nonce, signature);
        IERC20(token).safeTransfer(x402BatchSettlement, amount);
    }
}
