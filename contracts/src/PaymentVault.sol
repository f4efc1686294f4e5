// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title One inference node's payment address: x402 payments (EIP-3009 `transferWithAuthorization`
/// to this address) and redeemed prepaid vouchers land here, and only the settlement contract can
/// move them, as the fees of the node's receipt batches.
/// @dev Deployed by `Settlement` with CREATE2 (salt = the node's address), so its address is known
/// before it exists and payments can arrive first. Because clients sign only `to`, a per-node
/// address is what binds a standard EIP-3009 payment to its node: whoever submits the
/// authorization, the tokens reach the right node's fees.
contract PaymentVault {
    using SafeERC20 for IERC20;

    address public immutable settlement;
    IERC20 public immutable token;

    error OnlySettlement();

    constructor(IERC20 token_) {
        settlement = msg.sender;
        token = token_;
    }

    /// @notice Moves `amount` to the settlement contract (called when it escrows a batch's fees).
    function release(uint256 amount) external {
        if (msg.sender != settlement) revert OnlySettlement();
        token.safeTransfer(settlement, amount);
    }
}
